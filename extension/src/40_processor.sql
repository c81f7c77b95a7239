/*
 * extension/src/40_processor.sql
 *	  The processor of the queue: alipayplus_process_cancellations (a window
 *	  of calls in flight at once), the procedures that commit as they go
 *	  (alipayplus_run_cancellations for pg_cron, alipayplus_process_backlog;
 *	  alipayplus_require_top_level refuses to run them where they cannot
 *	  commit), requeueing, closing attention items, refunds and payment
 *	  results, stale orders, queue depth.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

/*
 * The processor, a window at a time.  A window is up to
 * alipayplus.max_concurrency due rows, claimed one by one (SKIP LOCKED,
 * the bound order taken without waiting, trouble with the order flagged
 * on the row), called all at once, and settled one by one.  A run claims a
 * window only while its time budget lasts, and every call of the window
 * ends within what is left of it.
 */
CREATE FUNCTION @extschema@.alipayplus_process_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds', continue_run bigint DEFAULT NULL)
RETURNS TABLE (run_id bigint, claimed integer, cancelled integer, retrying integer,
	attention integer, unanswered integer, busy integer, elapsed_ms numeric,
	last_error text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	v_start timestamptz := pg_catalog.clock_timestamp();
	v_done bigint[] := '{}';
	v_window alipayplus.cancellations[];
	v_claimed alipayplus.cancellations[];
	v_width integer;
	v_nothing_due boolean;
	v_left_ms integer;
	c alipayplus.cancellations;
	a alipayplus.cancel_attempts;
	r record;
	n_claimed integer := 0;
	n_cancelled integer := 0;
	n_retrying integer := 0;
	n_attention integer := 0;
	n_unanswered integer := 0;
	n_busy integer := 0;
	v_stop text := 'nothing due';
	v_claim_error text;
	v_last_error text;
	v_run bigint;
	v_statement_timeout interval := current_setting('statement_timeout')::interval;
	v_concurrency integer;
	v_interrupted boolean := false;
BEGIN
	IF $1 IS NULL OR $1 < 1 THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'max_count must be at least 1';
	END IF;
	IF $2 IS NULL OR $2 <= interval '0' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'time_budget must be positive';
	END IF;
	/* the calls' time limits are milliseconds in an integer */
	IF $2 > interval '24 days' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'time_budget must be at most 24 days',
			DETAIL = 'A run''s calls are bounded by what is left of its time budget, in milliseconds that must fit an integer.',
			HINT = 'A run is meant to take seconds to hours: give a shorter time_budget and run it again.';
	END IF;
	PERFORM alipayplus._check_config();
	/* read only now: the line above loads the library that defines it */
	v_concurrency := current_setting('alipayplus.max_concurrency')::integer;
	PERFORM pg_catalog.set_config('alipayplus_cancel.interrupted', 'false', true);

	LOOP
		IF n_claimed >= $1 THEN
			v_stop := 'max_count reached';
			EXIT;
		END IF;
		v_left_ms := (extract(epoch FROM $2 - (pg_catalog.clock_timestamp() - v_start)) * 1000)::integer;
		IF v_left_ms <= 0 THEN
			v_stop := 'time budget used';
			EXIT;
		END IF;
		IF v_statement_timeout > interval '0'
		   AND pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()
			   > v_statement_timeout - interval '500 ms' THEN
			v_stop := 'statement_timeout near';
			EXIT;
		END IF;

		/*
		 * Claim a window of due rows in one statement (SKIP LOCKED), then
		 * take each one's bound order row without waiting.  A row whose
		 * order is locked (a notification or request in progress) is left
		 * for a later run; one whose order cannot be used is flagged.
		 */
		v_width := least(v_concurrency, $1 - n_claimed);
		v_window := '{}';
		v_claimed := ARRAY(
			SELECT x FROM alipayplus.cancellations x
			WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
				AND x.next_attempt_at <= pg_catalog.clock_timestamp()
				AND x.cancellation_id <> ALL (v_done)
			ORDER BY x.next_attempt_at, x.cancellation_id
			LIMIT v_width
			FOR UPDATE SKIP LOCKED);
		v_nothing_due := cardinality(v_claimed) < v_width;
		FOREACH c IN ARRAY v_claimed LOOP
			v_done := v_done || c.cancellation_id;
			v_claim_error := NULL;
			BEGIN
				/* by its request id when known (issue 19, item 3) */
				PERFORM alipayplus._lock_order(
					CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
					coalesce(c.payment_request_id, c.sent_id), true);
			EXCEPTION
				WHEN lock_not_available THEN
					n_busy := n_busy + 1;
					CONTINUE;
				WHEN OTHERS THEN
					GET STACKED DIAGNOSTICS v_claim_error = MESSAGE_TEXT;
			END;
			IF v_claim_error IS NOT NULL THEN
				n_claimed := n_claimed + 1;
				UPDATE alipayplus.cancellations x SET
					needs_attention = true, next_attempt_at = NULL,
					attention_reason = format('the bound order cannot be used: %s; fix the order row, then run alipayplus_requeue_cancellation(%s)',
											  v_claim_error, x.cancellation_id)
				WHERE x.cancellation_id = c.cancellation_id;
				n_attention := n_attention + 1;
				CONTINUE;
			END IF;
			v_window := v_window || c;
		END LOOP;

		/*
		 * Under a statement_timeout, the calls must leave time to record
		 * and apply their answers before the statement would be cancelled.
		 */
		IF v_statement_timeout > interval '0' THEN
			v_left_ms := least(v_left_ms,
				(extract(epoch FROM v_statement_timeout
						 - (pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp())) * 1000)::integer
				- 500 - 5 * cardinality(v_window));
		END IF;
		IF cardinality(v_window) > 0 THEN
			n_claimed := n_claimed + cardinality(v_window);
			/* call them all at once, then settle each */
			FOR r IN
				SELECT * FROM alipayplus._call_cancel_many(
					ARRAY(SELECT w.sent_field FROM unnest(v_window) WITH ORDINALITY w ORDER BY w.ordinality),
					ARRAY(SELECT w.sent_id FROM unnest(v_window) WITH ORDINALITY w ORDER BY w.ordinality),
					v_left_ms)
			LOOP
				c := v_window[r.ord];
				IF r.result_code = 'local.not_sent' THEN
					/* the run's time ran out before this call started: left due */
					n_claimed := n_claimed - 1;
					CONTINUE;
				END IF;
				a := alipayplus._settle(c, r, 'alipayplus_process_cancellations');
				IF current_setting('alipayplus_cancel.interrupted', true) = 'true' THEN
					v_interrupted := true;
				END IF;
				IF alipayplus._unanswered(a.result_code) THEN
					n_unanswered := n_unanswered + 1;
					v_last_error := format('%s: %s', a.result_code, a.error_detail);
				END IF;
				SELECT * INTO c FROM alipayplus.cancellations x
				WHERE x.cancellation_id = c.cancellation_id;
				IF c.needs_attention THEN
					n_attention := n_attention + 1;
				ELSIF c.state = 'CANCELLED' THEN
					n_cancelled := n_cancelled + 1;
				ELSE
					n_retrying := n_retrying + 1;
				END IF;
			END LOOP;
		END IF;

		IF v_interrupted THEN
			/* a cancel or statement_timeout came while an answer was applied */
			v_stop := 'interrupted';
			EXIT;
		END IF;
		IF v_nothing_due THEN
			v_stop := 'nothing due';
			EXIT;
		END IF;
		/* a gateway that answers nothing: do not spend the run on it */
		IF n_claimed >= 3 AND n_unanswered = n_claimed THEN
			v_stop := 'gateway not answering';
			EXIT;
		END IF;
	END LOOP;

	IF $3 IS NOT NULL THEN
		UPDATE alipayplus.processor_runs x SET
			finished_at = pg_catalog.clock_timestamp(),
			claimed = x.claimed + n_claimed, cancelled = x.cancelled + n_cancelled,
			retrying = x.retrying + n_retrying, attention = x.attention + n_attention,
			unanswered = x.unanswered + n_unanswered, busy = x.busy + n_busy,
			stopped_because = v_stop
		WHERE x.run_id = $3
		RETURNING x.run_id INTO v_run;
	END IF;
	IF v_run IS NULL THEN
		INSERT INTO alipayplus.processor_runs AS x
			(started_at, finished_at, claimed, cancelled, retrying, attention,
			 unanswered, busy, stopped_because)
		VALUES (v_start, pg_catalog.clock_timestamp(), n_claimed, n_cancelled,
				n_retrying, n_attention, n_unanswered, n_busy, v_stop)
		RETURNING x.run_id INTO v_run;
	END IF;

	RETURN QUERY SELECT v_run, n_claimed, n_cancelled, n_retrying, n_attention,
		n_unanswered, n_busy,
		round(extract(epoch FROM pg_catalog.clock_timestamp() - v_start) * 1000, 1),
		v_last_error;
END;
$$;

COMMENT ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) IS
	'Call cancelPayment for due CANCELLING rows (SKIP LOCKED) in the caller''s transaction, bounded by max_count and time_budget';

/*
 * Raises 25001 unless its caller can commit: see src/ledger.c.  Public:
 * it reads nothing and signs nothing, and the roles that run the
 * processor (often without USAGE on schema alipayplus) must be able to
 * call it.
 */
CREATE PROCEDURE @extschema@.alipayplus_require_top_level(procedure_name text)
AS 'MODULE_PATHNAME', 'alipayplus_require_top_level'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_require_top_level(text) IS
	'Internal: raises 25001 unless the calling procedure can commit (a CALL of its own, outside a transaction block)';

/*
 * For long queues: the processor a window at a time, committing after
 * each, so that a crash, a cancel or a timeout loses at most one window
 * and other sessions see the progress.  With progress set, a NOTICE every
 * that often: done, left, rate, and the time the rest will take at that
 * rate.  Raises ZA004 at the end (after committing) when the gateway
 * answered none of its attempts.
 */
CREATE PROCEDURE @extschema@.alipayplus_process_backlog(max_count integer DEFAULT 1000000,
	time_budget interval DEFAULT '1 hour', progress interval DEFAULT '5 seconds')
LANGUAGE plpgsql
AS $$
DECLARE
	v_start timestamptz := pg_catalog.clock_timestamp();
	v_said timestamptz := pg_catalog.clock_timestamp();
	v_left interval;
	v_run bigint;
	r record;
	n integer := 0;
	n_cancelled integer := 0;
	n_unanswered integer := 0;
	v_last_error text;
	v_due bigint;
	v_rate float8;
	v_interrupted boolean := false;
BEGIN
	/* before anything is claimed or sent: it must be able to commit */
	CALL @extschema@.alipayplus_require_top_level('alipayplus_process_backlog');
	/*
	 * and a COMMIT, the only sure test: a caller's deferred constraint, or
	 * a loop over a query that is not read-only, lets CallContext say it
	 * can commit, yet makes the first COMMIT fail; it must fail here
	 */
	COMMIT;
	LOOP
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		v_left := time_budget - (pg_catalog.clock_timestamp() - v_start);
		EXIT WHEN n >= max_count OR v_left <= interval '0';
		SELECT * INTO r FROM @extschema@.alipayplus_process_cancellations(
			least(max_count - n,
				  /* one at first if the library is not loaded in this session yet */
				  coalesce(current_setting('alipayplus.max_concurrency', true)::integer, 1)),
			v_left, v_run) x;
		v_run := r.run_id;
		n := n + r.claimed;
		n_cancelled := n_cancelled + r.cancelled;
		n_unanswered := n_unanswered + r.unanswered;
		v_last_error := coalesce(r.last_error, v_last_error);
		v_interrupted := current_setting('alipayplus_cancel.interrupted', true) = 'true';
		COMMIT;
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		IF progress IS NOT NULL AND pg_catalog.clock_timestamp() - v_said >= progress THEN
			v_said := pg_catalog.clock_timestamp();
			v_rate := n / greatest(extract(epoch FROM v_said - v_start), 0.001);
			IF pg_catalog.has_function_privilege('@extschema@.alipayplus_queue_depth()', 'EXECUTE') THEN
				SELECT q.due INTO v_due FROM @extschema@.alipayplus_queue_depth() q;
			END IF;
			RAISE NOTICE '% done (% cancelled), % per second, % still due, about % left',
				n, n_cancelled, round(v_rate::numeric, 1), coalesce(v_due::text, 'how many'),
				CASE WHEN v_rate > 0 AND v_due IS NOT NULL
					 THEN pg_catalog.make_interval(secs => round((v_due / v_rate)::numeric))::text
					 ELSE 'unknown' END;
		END IF;
		EXIT WHEN r.claimed = 0 OR v_interrupted;
	END LOOP;
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	IF progress IS NOT NULL THEN
		RAISE NOTICE '% done (% cancelled) in %, processor run %',
			n, n_cancelled, date_trunc('second', pg_catalog.clock_timestamp() - v_start), v_run;
	END IF;
	IF n > 0 AND n_unanswered = n THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA004',
			MESSAGE = format('the Alipay+ gateway did not answer any of the %s attempts of processor run %s', n, v_run),
			DETAIL = format('Last: %s. The attempts are recorded in alipayplus.cancel_attempts and each cancellation backs off on its own.', v_last_error),
			HINT = 'Check alipayplus.gateway_url, alipayplus.ca_file and the network.';
	END IF;
END;
$$;
COMMENT ON PROCEDURE @extschema@.alipayplus_process_backlog(integer, interval, interval) IS
	'For long queues: the processor a window at a time (alipayplus.max_concurrency calls in flight), committing after each window, with progress NOTICEs';

/* pg_cron's procedure: the same, a window at a time, without progress NOTICEs */
CREATE PROCEDURE @extschema@.alipayplus_run_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds')
LANGUAGE plpgsql
AS $$
DECLARE
	v_start timestamptz := pg_catalog.clock_timestamp();
	v_left interval;
	v_run bigint;
	r record;
	n integer := 0;
	n_unanswered integer := 0;
	v_last_error text;
	v_interrupted boolean := false;
BEGIN
	/* before anything is claimed or sent: it must be able to commit */
	CALL @extschema@.alipayplus_require_top_level('alipayplus_run_cancellations');
	/*
	 * and a COMMIT, the only sure test: a caller's deferred constraint, or
	 * a loop over a query that is not read-only, lets CallContext say it
	 * can commit, yet makes the first COMMIT fail; it must fail here
	 */
	COMMIT;
	LOOP
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		v_left := time_budget - (pg_catalog.clock_timestamp() - v_start);
		EXIT WHEN n >= max_count OR v_left <= interval '0';
		SELECT * INTO r FROM @extschema@.alipayplus_process_cancellations(
			least(max_count - n,
				  /* one at first if the library is not loaded in this session yet */
				  coalesce(current_setting('alipayplus.max_concurrency', true)::integer, 1)),
			v_left, v_run) x;
		v_run := r.run_id;
		n := n + r.claimed;
		n_unanswered := n_unanswered + r.unanswered;
		v_last_error := coalesce(r.last_error, v_last_error);
		v_interrupted := current_setting('alipayplus_cancel.interrupted', true) = 'true';
		COMMIT;
		EXIT WHEN r.claimed = 0 OR v_interrupted;
	END LOOP;
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	IF n > 0 AND n_unanswered = n THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA004',
			MESSAGE = format('the Alipay+ gateway did not answer any of the %s attempts of processor run %s', n, v_run),
			DETAIL = format('Last: %s. The attempts are recorded in alipayplus.cancel_attempts and each cancellation backs off on its own.', v_last_error),
			HINT = 'Check alipayplus.gateway_url, alipayplus.ca_file and the network.';
	END IF;
END;
$$;
COMMENT ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) IS
	'For pg_cron: the processor, committing after each cancellation; fails (ZA004) when the gateway answered nothing';

CREATE FUNCTION @extschema@.alipayplus_requeue_cancellation(cancellation_id bigint)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	c alipayplus.cancellations;
BEGIN
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'no_data_found',
			MESSAGE = format('no cancellation with id %s', $1);
	END IF;
	/*
	 * The order row first, then the ledger row, like every other path; by
	 * its request id when the row knows it (a payment id the order may not
	 * have stored yet would not find it)
	 */
	PERFORM alipayplus._lock_order(
		CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
		coalesce(c.payment_request_id, c.sent_id));
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1 FOR UPDATE;
	IF c.state = 'CANCELLED' AND NOT c.needs_attention THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s is CANCELLED; there is nothing to requeue', $1);
	END IF;

	IF c.state = 'CANCELLED' THEN
		/* Alipay+ cancelled it; only the bound order has to follow */
		SELECT * INTO b FROM alipayplus.order_binding;
		IF FOUND THEN
			PERFORM alipayplus._set_order_status(
				CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
				coalesce(c.payment_request_id, c.sent_id), b.cancelled_value,
				c.sent_field, c.sent_id);
		END IF;
		UPDATE alipayplus.cancellations x SET
			needs_attention = false, attention_reason = NULL
		WHERE x.cancellation_id = $1
		RETURNING * INTO c;
		RETURN c;
	END IF;

	UPDATE alipayplus.cancellations x SET
		needs_attention = false, attention_reason = NULL,
		retry_budget_start = x.attempt_count, unanswered_streak = 0,
		next_attempt_at = pg_catalog.now()
	WHERE x.cancellation_id = $1
	RETURNING * INTO c;
	RETURN c;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_requeue_cancellation(bigint) IS
	'After a person fixed the cause: retry with a fresh attempt budget, or (for a CANCELLED row whose order could not follow) update the order';

/* The role the caller acts as (SET ROLE), which SECURITY DEFINER hides */
CREATE FUNCTION alipayplus._outer_user()
RETURNS name
AS 'MODULE_PATHNAME', 'alipayplus_outer_user'
LANGUAGE C STABLE;

/*
 * Close an item of alipayplus.attention: who (the role acted as, and the
 * session user), when, why (the note) and what it said are kept on the
 * row; the item leaves the view until something new opens it again.
 */
CREATE FUNCTION @extschema@.alipayplus_close_attention(cancellation_id bigint, note text)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c alipayplus.cancellations;
	v_reason text;
BEGIN
	IF $1 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'give the cancellation_id of an item of alipayplus.attention';
	END IF;
	IF $2 IS NULL OR pg_catalog.btrim($2) = '' THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'say why the item is closed: note must not be empty',
			HINT = 'For example: ''refunded as R-123, ticket 456'' or ''Alipay+ support confirmed the cancellation''.';
	END IF;
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1 FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'no_data_found',
			MESSAGE = format('no cancellation with id %s', $1);
	END IF;
	SELECT a.reason INTO v_reason FROM alipayplus.attention a
	WHERE a.cancellation_id = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s has no open attention item', $1),
			DETAIL = CASE WHEN c.attention_closed_at IS NOT NULL THEN
				format('Its last item was closed at %s by %s: %s', c.attention_closed_at,
					   c.attention_closed_by, c.attention_closed_note)
				ELSE 'Nothing about it needs a person.' END,
			HINT = 'alipayplus.attention lists the open items.';
	END IF;
	/*
	 * A flagged CANCELLED row is a verified S whose bound order did not
	 * follow: its only remedy is alipayplus_requeue_cancellation, which
	 * needs the flag, so closing it would strand the order, unseen.  (A
	 * closed CANCELLING row can still be requeued.)
	 */
	IF c.needs_attention AND c.state = 'CANCELLED' THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s cannot be closed: Alipay+ cancelled the payment and the bound order must follow', $1),
			DETAIL = format('The item says: %s', c.attention_reason),
			HINT = format('Fix what kept the order from being updated, then run alipayplus_requeue_cancellation(%s).', $1);
	END IF;
	UPDATE alipayplus.cancellations x SET
		needs_attention = false, attention_reason = NULL,
		attention_closed_at = pg_catalog.clock_timestamp(),
		attention_closed_by = alipayplus._outer_user(),
		attention_closed_session_user = session_user,
		attention_closed_note = $2,
		attention_closed_reason = v_reason
	WHERE x.cancellation_id = $1
	RETURNING * INTO c;
	RETURN c;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_close_attention(bigint, text) IS
	'Close an open item of alipayplus.attention, keeping who, when and why; a flagged row stays out of the queue';

/*
 * For alipayplus_note_refund: lock the ids (the same advisory locks the
 * cancel paths take, src/ledger.c) and say whether either already has a
 * cancellation, on the latest committed data.
 */
CREATE FUNCTION alipayplus._refund_blocked(refund_request_id text, refund_id text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'alipayplus_refund_blocked'
LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.alipayplus_note_refund(refund_request_id text,
	refund_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF $1 IS NULL AND $2 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'give refund_request_id or refund_id';
	END IF;
	IF alipayplus._refund_blocked($1, $2) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA003',
			MESSAGE = format('%s already has a cancellation as a payment', coalesce($1, $2)),
			HINT = 'A payment whose cancellation was requested cannot be noted as a refund; see alipayplus.cancellations.';
	END IF;
	INSERT INTO alipayplus.known_refunds (refund_request_id, refund_id)
	VALUES ($1, $2) ON CONFLICT DO NOTHING;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_note_refund(text, text) IS
	'Record a refund id so that it can never be sent to cancelPayment';

/*
 * A payment notification or inquiryPayment result: moves the bound order
 * only if no cancellation was requested.  A late notification (one for a
 * payment with a cancellation) is kept with the clock time it is recorded
 * at, and a later U or F does not replace a paid (S) one that is still
 * open.
 */
CREATE FUNCTION @extschema@.alipayplus_apply_payment_result(payment_request_id text,
	result_status text, result_code text DEFAULT NULL, payment_id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	o record;
	c alipayplus.cancellations;
	v_lock_field text := CASE WHEN $1 IS NOT NULL THEN 'paymentRequestId' ELSE 'paymentId' END;
	v_lock_id text := coalesce($1, $4);
	v_request_id text := $1;
	v_payment_id text := $4;
BEGIN
	IF $1 IS NULL AND $4 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'either payment_request_id or payment_id must be given';
	END IF;
	IF $2 IS NULL OR $2 NOT IN ('S', 'F', 'U') THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('result_status must be S, F or U, not %s', coalesce(quote_literal($2), 'NULL'));
	END IF;

	/* the order row lock serializes this with a concurrent cancel request */
	o := alipayplus._lock_order(v_lock_field, v_lock_id);
	IF o.order_found THEN
		v_request_id := coalesce(v_request_id, o.request_id);
		v_payment_id := coalesce(v_payment_id, o.payment_id);
	END IF;

	/* the payment's own cancellation: by its request id, or by its payment id
	   when that cancellation knows no other request id */
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE (x.sent_field = 'paymentRequestId' AND x.sent_id = v_request_id)
	   OR (x.sent_field = 'paymentId' AND x.sent_id = v_payment_id
		   AND (v_request_id IS NULL OR x.payment_request_id IS NULL
				OR x.payment_request_id = v_request_id))
	ORDER BY x.sent_field DESC, x.cancellation_id LIMIT 1
	FOR UPDATE;
	IF FOUND THEN
		/*
		 * Kept with the time it is recorded (not the transaction's start),
		 * comparable with attention_closed_at.  A paid (S) one a person has
		 * not closed yet is never replaced by a later U or F: the payment
		 * may stand, and only the S says so.
		 */
		UPDATE alipayplus.cancellations x SET
			late_payment_status = $2, late_payment_code = $3,
			late_payment_at = pg_catalog.clock_timestamp()
		WHERE x.cancellation_id = c.cancellation_id
			AND NOT ($2 <> 'S' AND x.late_payment_status = 'S'
					 AND (x.attention_closed_at IS NULL
						  OR x.late_payment_at > x.attention_closed_at));
		RETURN 'recorded_late';
	END IF;

	IF NOT o.order_found THEN
		RETURN 'no_order';
	END IF;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF o.status IN (b.cancelled_value, b.cancelling_value) THEN
		RETURN 'ignored_order_cancelling';
	END IF;
	IF $2 = 'S' AND b.paid_value IS NOT NULL THEN
		PERFORM alipayplus._set_order_status(v_lock_field, v_lock_id, b.paid_value);
		RETURN 'applied';
	ELSIF $2 = 'F' AND b.failed_value IS NOT NULL THEN
		PERFORM alipayplus._set_order_status(v_lock_field, v_lock_id, b.failed_value);
		RETURN 'applied';
	END IF;
	RETURN 'unchanged';
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_apply_payment_result(text, text, text, text) IS
	'Apply a payment notification or inquiryPayment result: moves a bound order only if no cancellation was requested';

/*
 * The request ids of the bound orders whose status is one of the binding's
 * pending values (still waiting for a payment result) and which were
 * initiated longer than older_than ago (oldest first), read as the table's
 * owner.  Needs an initiation time column and the pending values in the
 * binding; an order in any other status (shipped, refunded, expired, NULL)
 * is never picked.
 */
CREATE FUNCTION @extschema@.alipayplus_stale_orders(older_than interval)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	r text[];
	v_initiated text;
BEGIN
	IF $1 IS NULL OR $1 < interval '0' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'older_than must be an interval of zero or more';
	END IF;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR b.initiated_at_column IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'alipayplus_stale_orders needs a bound orders table with an initiation time column',
			HINT = 'Bind it with alipayplus_bind_orders(..., initiated_at_column => ..., pending_values => ...).';
	END IF;
	IF b.pending_values IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'alipayplus_stale_orders needs the pending status values in the binding',
			DETAIL = 'Only orders in a status that means "waiting for the payment result" may be cancelled as stale; without the list, shipped, refunded or expired orders would be taken for waiting ones.',
			HINT = 'Bind the table again with alipayplus_bind_orders(..., pending_values => ARRAY[''PENDING'']), naming your statuses of orders still waiting for their payment result.';
	END IF;
	v_initiated := CASE WHEN b.initiated_at_time_zone IS NULL THEN format('%I', b.initiated_at_column)
		ELSE format('pg_catalog.timezone(%L, %I)', b.initiated_at_time_zone, b.initiated_at_column) END;
	FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
		format('SELECT %I::pg_catalog.text FROM %s WHERE %s OPERATOR(pg_catalog.<) $1::pg_catalog.timestamptz '
			   'AND %I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[]) ORDER BY %s',
			   b.request_id_column, b.orders, v_initiated, b.status_column, v_initiated),
		ARRAY[(pg_catalog.now() - $1)::text, b.pending_values::text])
	LOOP
		RETURN NEXT r[1];
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_stale_orders(interval) IS
	'Request ids of bound orders in a pending status (the binding''s pending_values) initiated longer than older_than ago';

/*
 * Queue depth, for the stats view and the backlog's progress: rows with a
 * due time.  A closed item of a flagged CANCELLING row leaves the row
 * CANCELLING, not flagged and with no due time: it waits for nothing, so
 * the queue figures count only rows with a due time.
 */
CREATE FUNCTION @extschema@.alipayplus_queue_depth(OUT queued bigint, OUT due bigint,
	OUT oldest_due timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT count(*), count(*) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()),
		min(x.next_attempt_at) FILTER (WHERE x.next_attempt_at <= pg_catalog.now())
	FROM alipayplus.cancellations x
	WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
		AND x.next_attempt_at IS NOT NULL
$$;

/*
 * The background worker (alipayplus.database_name, src/worker.c) is woken
 * when a transaction that made a row due commits: this trigger notes each
 * such row, and the library sets the worker's latch at the commit.  A
 * no-op when no worker serves this database.
 */
CREATE FUNCTION alipayplus._wake_worker()
RETURNS trigger
AS 'MODULE_PATHNAME', 'alipayplus_wake_worker'
LANGUAGE C;
COMMENT ON FUNCTION alipayplus._wake_worker() IS
	'Trigger: wake the background worker when the transaction commits';
CREATE TRIGGER cancellations_wake_worker
	AFTER INSERT OR UPDATE OF next_attempt_at ON alipayplus.cancellations
	FOR EACH ROW WHEN (NEW.state = 'CANCELLING' AND NEW.next_attempt_at IS NOT NULL
		AND NOT NEW.needs_attention)
	EXECUTE FUNCTION alipayplus._wake_worker();
