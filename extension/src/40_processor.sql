/*
 * extension/src/40_processor.sql
 *	  The processor of the queue: alipayplus_process_cancellations (the
 *	  claim-then-call pipeline of src/processor.c in the caller's
 *	  transaction, and its steps in SQL), the procedures that commit as they go
 *	  (alipayplus_run_cancellations for pg_cron, alipayplus_process_backlog;
 *	  alipayplus_require_top_level refuses to run them where they cannot
 *	  commit), requeueing, closing attention items, refunds and payment
 *	  results, stale orders, queue depth.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

/*
 * The processor: the claim-then-call pipeline of src/processor.c.  Up to
 * alipayplus.max_concurrency calls in flight; each slot is refilled as
 * soon as its answer is settled.  A row is claimed (SKIP LOCKED, the bound
 * order taken without waiting, busy ones left, unusable ones flagged),
 * leased, and given an attempt row "no answer yet" with the parameters it
 * will send, before its request leaves; the answer completes it.  This
 * form runs in the caller's transaction: it never commits, so everything
 * rolls back with the caller.
 */
CREATE FUNCTION @extschema@.alipayplus_process_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds', continue_run bigint DEFAULT NULL)
RETURNS TABLE (run_id bigint, claimed integer, cancelled integer, retrying integer,
	attention integer, unanswered integer, busy integer, elapsed_ms numeric,
	last_error text)
AS 'MODULE_PATHNAME', 'alipayplus_process_cancellations'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) IS
	'Call cancelPayment for due CANCELLING rows (SKIP LOCKED) in the caller''s transaction, bounded by max_count and time_budget';

/*
 * The pipeline's steps in SQL (called by src/processor.c as the
 * extension's owner; not for PUBLIC).
 *
 * A run's row, written when it starts: pid and backend_start name the
 * backend, so that a run whose backend ended without finishing it is
 * recognised.
 */
CREATE FUNCTION alipayplus._run_begin(p_caller text)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	INSERT INTO alipayplus.processor_runs
		(started_at, finished_at, claimed, cancelled, retrying, attention,
		 unanswered, busy, stopped_because, pid, backend_start, caller)
	SELECT pg_catalog.clock_timestamp(), NULL, 0, 0, 0, 0, 0, 0, 'running',
		pg_catalog.pg_backend_pid(), s.backend_start, p_caller
	FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) s
	RETURNING run_id;
END;

/*
 * Whether processor run x is still working: not finished, and its backend
 * holds the run's session-level lock on the object (this database,
 * alipayplus.processor_runs, the low 32 bits of the run id, 0), which the
 * run takes when it begins and lets go when it ends; an abort and the
 * session's end let it go too, and no SQL can take or release it
 * (src/processor.c).  pg_locks is read afresh at every call
 * (pg_stat_activity would be as of the transaction's first look).  The
 * run's claims are its own while it works, however long an answer takes to
 * apply (an order owner's slow trigger): they are never reaped.
 */
CREATE FUNCTION alipayplus._run_alive(x alipayplus.processor_runs)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT x.finished_at IS NULL AND x.stopped_because = 'running'
		AND EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
					WHERE l.locktype = 'object' AND l.pid = x.pid AND l.granted
						AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
										  WHERE d.datname = pg_catalog.current_database())
						AND l.classid = 'alipayplus.processor_runs'::pg_catalog.regclass
						AND l.objid = pg_catalog.oid(x.run_id OPERATOR(pg_catalog.&) 4294967295)
						AND l.objsubid = 0);
END;

/*
 * Runs no longer working (alipayplus._run_alive: their backend is gone, or
 * has moved on after an error ended them, or is this one) are said to have
 * ended unfinished, and the attempts nobody will complete (their run
 * ended; an attempt of no run, its lease expired) are returned, their
 * ledger rows locked (SKIP LOCKED: one being settled right now is left),
 * to be completed as local.crashed.  p_run's own attempts, and those of a
 * run still working, are never among them.
 */
CREATE FUNCTION alipayplus._stale_attempts(p_run bigint)
RETURNS TABLE (attempt_id bigint, cancellation_id bigint, sent_field text,
	sent_id text, request_time text, why text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE alipayplus.processor_runs x SET
		finished_at = pg_catalog.clock_timestamp(),
		stopped_because = CASE WHEN x.pid = pg_catalog.pg_backend_pid()
				OR EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(x.pid) s
						   WHERE s.backend_start = x.backend_start)
			THEN 'ended unfinished: an error ended the run; its calls without an answer are recorded as local.crashed'
			ELSE 'ended unfinished: its backend exited during the run (pg_terminate_backend, a crash or kill); its calls without an answer are recorded as local.crashed' END
	WHERE x.finished_at IS NULL AND x.stopped_because = 'running'
		AND x.run_id IS DISTINCT FROM p_run
		AND (x.pid = pg_catalog.pg_backend_pid() OR NOT alipayplus._run_alive(x));
	RETURN QUERY
	SELECT a.attempt_id, a.cancellation_id, a.sent_field, a.sent_id, a.request_time,
		CASE WHEN a.run_id IS NOT NULL
			 THEN pg_catalog.format('processor run %s ended before the answer was recorded', a.run_id)
			 ELSE pg_catalog.format('the claim expired at %s without an answer recorded', c.next_attempt_at) END
	FROM alipayplus.cancel_attempts a
	JOIN alipayplus.cancellations c ON c.cancellation_id = a.cancellation_id
	LEFT JOIN alipayplus.processor_runs p ON p.run_id = a.run_id
	WHERE a.result_code = 'local.no_answer_yet' AND a.completed_at IS NULL
		AND (p_run IS NULL OR a.run_id IS DISTINCT FROM p_run)
		AND (p.finished_at IS NOT NULL
			 OR (a.run_id IS NOT NULL AND p.run_id IS NULL)
			 OR (a.run_id IS NULL AND c.next_attempt_at <= pg_catalog.clock_timestamp()))
	ORDER BY a.attempt_id
	FOR UPDATE OF c SKIP LOCKED;
END;
$$;

/*
 * Claim up to p_width due rows for run p_run: SKIP LOCKED; each one's
 * bound order taken without waiting (by its request id when known): a
 * locked order is left for later ('busy'), one that cannot be used is
 * flagged ('flagged'); the others ('call') are leased (next_attempt_at
 * moved ahead by alipayplus.timeout_ms and p_margin) and given an attempt
 * row "no answer yet" with the request they will send (p_request_time).
 * Rows of p_skip are not claimed.
 */
CREATE FUNCTION alipayplus._claim(p_run bigint, p_width integer,
	p_request_time text, p_caller text, p_lease interval, p_skip bigint[])
RETURNS TABLE (kind text, cancellation_id bigint, attempt_id bigint,
	sent_field text, sent_id text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_rows alipayplus.cancellations[];
	c alipayplus.cancellations;
	v_ok bigint[] := '{}';
	v_err text;
	v_bound boolean := EXISTS (SELECT 1 FROM alipayplus.order_binding);
	/* a value, not a call: the due index's scan ends at the first row not due */
	v_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
	v_rows := ARRAY(
		SELECT x FROM alipayplus.cancellations x
		WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
			AND x.next_attempt_at <= v_now
			AND x.cancellation_id <> ALL (p_skip)
			/*
			 * A call of a run still working is its own (_stale_attempts).
			 * OFFSET 0 keeps this a lookup of the row's own attempts, made
			 * only for the rows read: planned as a join, with the ledger's
			 * statistics stale (the worker's burst), each row was checked
			 * against a scan of every call in flight.
			 */
			AND NOT EXISTS (SELECT 1 FROM alipayplus.cancel_attempts a
							WHERE a.cancellation_id = x.cancellation_id
								AND a.result_code = 'local.no_answer_yet'
								AND a.completed_at IS NULL
							OFFSET 0)
		ORDER BY x.next_attempt_at, x.cancellation_id
		LIMIT p_width
		FOR UPDATE SKIP LOCKED);
	FOREACH c IN ARRAY v_rows LOOP
		kind := 'call';
		IF v_bound THEN
			v_err := NULL;
			BEGIN
				/* by its request id when known (issue 19, item 3) */
				PERFORM alipayplus._lock_order(
					CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
					coalesce(c.payment_request_id, c.sent_id), true);
			EXCEPTION
				WHEN lock_not_available THEN
					kind := 'busy';
				WHEN OTHERS THEN
					GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT;
			END;
			IF v_err IS NOT NULL THEN
				UPDATE alipayplus.cancellations x SET
					needs_attention = true, next_attempt_at = NULL,
					attention_reason = format('the bound order cannot be used: %s; fix the order row, then run alipayplus_requeue_cancellation(%s)',
											  v_err, x.cancellation_id)
				WHERE x.cancellation_id = c.cancellation_id;
				kind := 'flagged';
			END IF;
		END IF;
		IF kind <> 'call' THEN
			cancellation_id := c.cancellation_id;
			attempt_id := NULL;
			sent_field := c.sent_field;
			sent_id := c.sent_id;
			RETURN NEXT;
			CONTINUE;
		END IF;
		v_ok := v_ok || c.cancellation_id;
	END LOOP;
	UPDATE alipayplus.cancellations x SET
		next_attempt_at = pg_catalog.clock_timestamp() + p_lease
	WHERE x.cancellation_id = ANY (v_ok);
	RETURN QUERY
	INSERT INTO alipayplus.cancel_attempts AS x
		(cancellation_id, sent_field, sent_id, request_time, result_status, result_code,
		 result_message, caller, run_id, completed_at)
	SELECT y.cancellation_id, y.sent_field, y.sent_id, p_request_time, 'U', 'local.no_answer_yet',
		'no answer yet: the request is on its way', p_caller, p_run, NULL
	FROM alipayplus.cancellations y
	WHERE y.cancellation_id = ANY (v_ok)
	ORDER BY y.next_attempt_at, y.cancellation_id
	RETURNING 'call'::text, x.cancellation_id, x.attempt_id, x.sent_field, x.sent_id;
END;
$$;

/* alipayplus._next_due(): in 45_resolve.sql, once alipayplus.resolutions exists */

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
 * For long queues: the pipeline, committing as it goes (each claim and
 * each group of settled answers in a short transaction of its own), so
 * that a crash, a cancel or a timeout loses nothing that was settled and
 * other sessions see the progress.  With progress set, a NOTICE every that
 * often: done, left, rate, and the time the rest will take at that rate.
 * Raises ZA004 at the end (after committing) when the gateway answered
 * none of its calls.
 */
CREATE PROCEDURE @extschema@.alipayplus_process_backlog(max_count integer DEFAULT 1000000,
	time_budget interval DEFAULT '1 hour', progress interval DEFAULT '5 seconds')
AS 'MODULE_PATHNAME', 'alipayplus_process_backlog'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_process_backlog(integer, interval, interval) IS
	'For long queues: the processor (alipayplus.max_concurrency calls in flight), committing as it goes, with progress NOTICEs';

/* pg_cron's procedure: the same pipeline, without progress NOTICEs */
CREATE PROCEDURE @extschema@.alipayplus_run_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds')
AS 'MODULE_PATHNAME', 'alipayplus_run_cancellations'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) IS
	'For pg_cron: the processor, committing as it goes; fails (ZA004) when the gateway answered nothing';

CREATE FUNCTION @extschema@.alipayplus_requeue_cancellation(cancellation_id bigint)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
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
	IF EXISTS (SELECT 1 FROM alipayplus.cancel_attempts a
			   JOIN alipayplus.processor_runs p ON p.run_id = a.run_id
			   WHERE a.cancellation_id = $1 AND a.result_code = 'local.no_answer_yet'
				   AND a.completed_at IS NULL AND alipayplus._run_alive(p)) THEN
		RAISE EXCEPTION USING ERRCODE = 'object_in_use',
			MESSAGE = format('cancellation %s is being called by a processor run right now', $1),
			HINT = 'Its answer is applied when it comes (within alipayplus.timeout_ms); requeue it afterwards if it is still flagged.';
	END IF;
	IF c.state = 'CANCELLED' AND NOT c.needs_attention AND c.order_follow_at IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s is CANCELLED; there is nothing to requeue', $1);
	END IF;

	IF c.state = 'CANCELLED' THEN
		/* Alipay+ cancelled it; only the bound order has to follow */
		PERFORM alipayplus._order_follows(c);
		UPDATE alipayplus.cancellations x SET
			needs_attention = false, attention_reason = NULL, order_follow_at = NULL
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

/*
 * A CANCELLED row's bound order follows the ledger: the order (found by
 * its request id when the row knows it) is set to the bound cancelled
 * value, with the order table owner's rights.  The order row is locked
 * first, as on every path.
 */
CREATE FUNCTION alipayplus._order_follows(c alipayplus.cancellations)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	IF FOUND THEN
		PERFORM alipayplus._set_order_status(
			CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
			coalesce(c.payment_request_id, c.sent_id), b.cancelled_value,
			c.sent_field, c.sent_id);
	END IF;
END;
$$;

/*
 * The bound orders still to follow their CANCELLED ledger rows
 * (order_follow_at: since when; the apply of a verified S was cut by the
 * caller's query cancel or statement_timeout, src/ledger.c), at most
 * max_count and until p_until, each in a subtransaction of its own;
 * called by every processor run when it starts (src/processor.c).  An
 * order locked by someone else is left for the next run (order_follow_at
 * stays, so that alipayplus.attention lists one still waiting after 10
 * minutes); an order whose update fails (its owner's trigger refuses)
 * flags the ledger row for a person, as when the first apply fails.  An
 * update cut again (57014: the caller's interrupt, or a trigger that says
 * so) flags the row too, so that one order cannot hold up the queue run
 * after run; the cancel is then noted for the processor
 * (alipayplus_cancel.interrupted), which stops as on any interrupt.
 * Returns how many orders followed.
 */
CREATE FUNCTION alipayplus._follow_orders(max_count integer, p_until timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c alipayplus.cancellations;
	n integer := 0;
	v_state text;
	v_msg text;
	v_err text;
BEGIN
	FOR c IN
		SELECT * FROM alipayplus.cancellations x
		WHERE x.order_follow_at <= pg_catalog.now()
		ORDER BY x.order_follow_at, x.cancellation_id
		LIMIT max_count
	LOOP
		EXIT WHEN pg_catalog.clock_timestamp() >= p_until;
		BEGIN
			PERFORM alipayplus._lock_order(
				CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
				coalesce(c.payment_request_id, c.sent_id), true);
			SELECT * INTO c FROM alipayplus.cancellations x
			WHERE x.cancellation_id = c.cancellation_id AND x.order_follow_at IS NOT NULL
			FOR UPDATE SKIP LOCKED;
			IF FOUND THEN
				PERFORM alipayplus._order_follows(c);
				UPDATE alipayplus.cancellations x SET order_follow_at = NULL
				WHERE x.cancellation_id = c.cancellation_id;
				n := n + 1;
			END IF;
		/* OTHERS alone does not catch a query cancel (57014) */
		EXCEPTION WHEN query_canceled OR OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			IF v_state <> '55P03' THEN
				UPDATE alipayplus.cancellations x SET
					order_follow_at = NULL, needs_attention = true,
					attention_reason = pg_catalog.format('Alipay+ cancelled the payment (verified S), but the bound order could not be updated: %s (SQLSTATE %s); fix that, then run alipayplus_requeue_cancellation(%s)',
						v_msg, v_state, c.cancellation_id)
				WHERE x.cancellation_id = c.cancellation_id
				RETURNING x.attention_reason INTO v_err;
				RAISE WARNING '%', v_err;
			END IF;
			IF v_state = '57014' THEN
				PERFORM pg_catalog.set_config('alipayplus_cancel.interrupted', v_msg, true);
				RETURN n;
			END IF;
		END;
	END LOOP;
	RETURN n;
END;
$$;

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
CREATE TRIGGER cancellations_wake_worker AFTER INSERT OR UPDATE OF next_attempt_at, order_follow_at ON alipayplus.cancellations
	FOR EACH ROW WHEN ((NEW.state = 'CANCELLING' AND NEW.next_attempt_at IS NOT NULL
		AND NOT NEW.needs_attention) OR NEW.order_follow_at IS NOT NULL)
	EXECUTE FUNCTION alipayplus._wake_worker();
