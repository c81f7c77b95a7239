/*
 * alipayplus_cancel--1.0--1.1.sql
 *	  Upgrade of the alipayplus_cancel extension from 1.0 to 1.1 (also the
 *	  second step of every fresh install of 1.1).
 *
 * 1.1 makes many calls at once: the processor claims a window of up to
 * alipayplus.max_concurrency due cancellations and calls Alipay+ for all
 * of them in flight together (alipayplus._call_cancel_many), then records
 * and applies each answer under the same rules as before.  New:
 * alipayplus_process_backlog (commits per window, reports progress),
 * alipayplus_request_cancel_all and alipayplus_stale_orders (queue many at
 * once, skipping and reporting what cannot be cancelled) and the view
 * alipayplus.stats.  No table is rewritten; no grant is lost (functions
 * that change are replaced, never dropped).
 */

\echo Use "ALTER EXTENSION alipayplus_cancel UPDATE TO '1.1'" to load this file. \quit

/* ------------------------------------------------------------------
 * Many calls at once
 * ------------------------------------------------------------------ */

CREATE FUNCTION alipayplus._call_cancel_many(fields text[], ids text[],
	max_ms integer DEFAULT NULL,
	OUT ord integer, OUT sent_field text, OUT sent_id text, OUT request_time text,
	OUT http_status integer, OUT result_status text, OUT result_code text,
	OUT result_message text, OUT acquirer_id text, OUT psp_id text,
	OUT signature_verified boolean, OUT latency_ms double precision,
	OUT error_detail text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'alipayplus_call_cancel_many'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._call_cancel_many(text[], text[], integer) FROM PUBLIC;

/*
 * Record one answer and apply it, isolated: a failure while applying
 * leaves the answer recorded and the row flagged instead of erasing it.
 */
CREATE FUNCTION alipayplus._settle(c alipayplus.cancellations, r record,
	p_caller text)
RETURNS alipayplus.cancel_attempts
LANGUAGE plpgsql
AS $$
DECLARE
	a alipayplus.cancel_attempts;
	v_msg text;
	v_state text;
BEGIN
	BEGIN
		a := alipayplus._record_attempt(c, r, p_caller);
		PERFORM alipayplus._apply_result(c, a);
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		/*
		 * Also a query cancel or statement_timeout while applying: the
		 * answer is kept and the run told to stop (see the processor).
		 */
		GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
		IF v_state = '57014' THEN
			PERFORM pg_catalog.set_config('alipayplus_cancel.interrupted', 'true', true);
		END IF;
		a := alipayplus._record_attempt(c, r, p_caller);
		c := alipayplus._result_not_applied(c, a,
			format('%s (SQLSTATE %s)', v_msg, v_state));
		RAISE WARNING USING MESSAGE = c.attention_reason;
	END;
	RETURN a;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._settle(alipayplus.cancellations, record, text) FROM PUBLIC;

/* One attempt for a locked ledger row: call (outside any subtransaction), then settle */
CREATE OR REPLACE FUNCTION alipayplus._attempt(c alipayplus.cancellations, p_caller text)
RETURNS alipayplus.cancel_attempts
LANGUAGE plpgsql
AS $$
DECLARE
	r record;
BEGIN
	IF c.sent_field = 'paymentRequestId' THEN
		SELECT * INTO r FROM alipayplus._call_cancel(NULL, c.sent_id);
	ELSE
		SELECT * INTO r FROM alipayplus._call_cancel(c.sent_id, NULL);
	END IF;
	RETURN alipayplus._settle(c, r, p_caller);
END;
$$;

/*
 * The processor, a window at a time.  A window is up to
 * alipayplus.max_concurrency due rows, claimed one by one (SKIP LOCKED,
 * the bound order taken without waiting, trouble with the order flagged
 * on the row), called all at once, and settled one by one.  A run claims a
 * window only while its time budget lasts, and every call of the window
 * ends within what is left of it.
 */
CREATE OR REPLACE FUNCTION @extschema@.alipayplus_process_cancellations(max_count integer DEFAULT 100,
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
				PERFORM alipayplus._lock_order(c.sent_field, c.sent_id, true);
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
REVOKE ALL ON PROCEDURE @extschema@.alipayplus_process_backlog(integer, interval, interval) FROM PUBLIC;

/* pg_cron's procedure: the same, a window at a time, without progress NOTICEs */
CREATE OR REPLACE PROCEDURE @extschema@.alipayplus_run_cancellations(max_count integer DEFAULT 100,
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

/*
 * The internal helpers of the call path run under the pinned search_path
 * of the SECURITY DEFINER functions that call them (they are granted to
 * nobody and schema-qualify what they use): without a SET clause of their
 * own they cost a GUC save and restore less per call, and the SQL ones can
 * be inlined.
 */
ALTER FUNCTION alipayplus._attempt(alipayplus.cancellations, text) RESET search_path;
ALTER FUNCTION alipayplus._clean_id(text) RESET search_path;
ALTER FUNCTION alipayplus._order_column(alipayplus.order_binding, text) RESET search_path;
ALTER FUNCTION alipayplus._column_type(regclass, name) RESET search_path;
ALTER FUNCTION alipayplus._lock_order(text, text, boolean) RESET search_path;
ALTER FUNCTION alipayplus._set_order_status(text, text, text, text, text) RESET search_path;
ALTER FUNCTION alipayplus._refuse_refund(text, text) RESET search_path;
ALTER FUNCTION alipayplus._mark_cancelling(text, text, timestamptz) RESET search_path;
ALTER FUNCTION alipayplus._retry_delay(integer, boolean) RESET search_path;
ALTER FUNCTION alipayplus._record_attempt(alipayplus.cancellations, record, text) RESET search_path;
ALTER FUNCTION alipayplus._unanswered(text) RESET search_path;
ALTER FUNCTION alipayplus._apply_result(alipayplus.cancellations, alipayplus.cancel_attempts) RESET search_path;
ALTER FUNCTION alipayplus._result_not_applied(alipayplus.cancellations, alipayplus.cancel_attempts, text) RESET search_path;

/* ------------------------------------------------------------------
 * Queueing many at once
 * ------------------------------------------------------------------ */

/*
 * Request the cancellation of every payment in the list (request ids, or
 * payment ids with by_payment_id), each in its own subtransaction: what
 * cannot be cancelled is skipped and reported, never aborts the rest.
 * One row per id: outcome is queued, already_requested, window_closed,
 * refund, invalid_id, several_orders or error, with the reason.
 */
CREATE FUNCTION @extschema@.alipayplus_request_cancel_all(ids text[],
	by_payment_id boolean DEFAULT false)
RETURNS TABLE (id text, outcome text, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	v_id text;
	v_before bigint;
	c alipayplus.cancellations;
	v_state text;
	v_msg text;
BEGIN
	FOREACH v_id IN ARRAY coalesce($1, '{}') LOOP
		BEGIN
			SELECT count(*) INTO v_before FROM alipayplus.cancellations x
			WHERE CASE WHEN $2 THEN x.payment_id = v_id
					   ELSE x.sent_field = 'paymentRequestId' AND x.sent_id = v_id END;
			IF $2 THEN
				c := alipayplus._mark_cancelling(v_id, NULL, NULL);
			ELSE
				c := alipayplus._mark_cancelling(NULL, v_id, NULL);
			END IF;
			RETURN QUERY SELECT v_id,
				CASE WHEN v_before > 0 THEN 'already_requested' ELSE 'queued' END,
				format('cancellation %s, %s', c.cancellation_id, c.state);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			IF v_state IN ('57014', '57P01') THEN
				RAISE;
			END IF;
			RETURN QUERY SELECT v_id,
				CASE v_state WHEN 'ZA002' THEN 'window_closed'
							 WHEN 'ZA003' THEN 'refund'
							 WHEN '22023' THEN 'invalid_id'
							 WHEN '22001' THEN 'invalid_id'
							 WHEN '21000' THEN 'several_orders'
							 ELSE 'error' END,
				format('%s (SQLSTATE %s)', v_msg, v_state);
		END;
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean) IS
	'Queue many cancellations at once; what cannot be cancelled is skipped and reported, one row per id';
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean) FROM PUBLIC;

/*
 * The request ids of the bound orders that are neither cancelling nor
 * cancelled, paid nor failed, and were initiated longer than older_than
 * ago (oldest first), read as the table's owner.  Needs an initiation time
 * column in the binding.
 */
CREATE FUNCTION @extschema@.alipayplus_stale_orders(older_than interval)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	r text[];
BEGIN
	IF $1 IS NULL OR $1 < interval '0' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'older_than must be an interval of zero or more';
	END IF;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR b.initiated_at_column IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'alipayplus_stale_orders needs a bound orders table with an initiation time column',
			HINT = 'Bind it with alipayplus_bind_orders(..., initiated_at_column => ...).';
	END IF;
	FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
		format('SELECT %I::pg_catalog.text FROM %s WHERE %s OPERATOR(pg_catalog.<) $1::pg_catalog.timestamptz '
			   'AND NOT %I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[]) ORDER BY %s',
			   b.request_id_column, b.orders,
			   CASE WHEN b.initiated_at_time_zone IS NULL THEN format('%I', b.initiated_at_column)
					ELSE format('pg_catalog.timezone(%L, %I)', b.initiated_at_time_zone, b.initiated_at_column) END,
			   b.status_column,
			   CASE WHEN b.initiated_at_time_zone IS NULL THEN format('%I', b.initiated_at_column)
					ELSE format('pg_catalog.timezone(%L, %I)', b.initiated_at_time_zone, b.initiated_at_column) END),
		ARRAY[(pg_catalog.now() - $1)::text,
			  ARRAY[b.cancelled_value, b.cancelling_value, b.paid_value, b.failed_value]::text])
	LOOP
		RETURN NEXT r[1];
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_stale_orders(interval) IS
	'Request ids of bound orders still waiting for their result after older_than';
REVOKE ALL ON FUNCTION @extschema@.alipayplus_stale_orders(interval) FROM PUBLIC;

/* ------------------------------------------------------------------
 * What the processor is doing
 * ------------------------------------------------------------------ */

/* Queue depth, for the stats view and the backlog's progress */
CREATE FUNCTION @extschema@.alipayplus_queue_depth(OUT queued bigint, OUT due bigint,
	OUT oldest_due timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT count(*), count(*) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()),
		min(x.next_attempt_at) FILTER (WHERE x.next_attempt_at <= pg_catalog.now())
	FROM alipayplus.cancellations x
	WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
$$;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_queue_depth() FROM PUBLIC;

CREATE INDEX cancel_attempts_attempted_at ON alipayplus.cancel_attempts (attempted_at);

CREATE VIEW alipayplus.stats AS
WITH recent AS (
	SELECT a.result_status, a.result_code, a.latency_ms
	FROM alipayplus.cancel_attempts a
	WHERE a.attempted_at > pg_catalog.now() - interval '1 hour'
)
SELECT
	/* backends waiting on Alipay+ right now (each may have many calls in flight) */
	(SELECT count(*) FROM pg_catalog.pg_stat_activity s
	 WHERE s.wait_event_type = 'Extension' AND s.wait_event = 'Extension'
	   AND s.query ~* 'alipayplus_(process_cancellations|run_cancellations|process_backlog|cancel_payment)') AS backends_calling,
	q.queued, q.due, q.oldest_due,
	(SELECT count(*) FROM alipayplus.cancellations x WHERE x.needs_attention) AS needing_attention,
	(SELECT count(*) FROM recent) AS attempts_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'S') AS s_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'F') AS f_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'U' AND result_code NOT LIKE 'local.%') AS u_last_hour,
	(SELECT count(*) FROM recent WHERE result_code LIKE 'local.%') AS local_last_hour,
	(SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p50_ms,
	(SELECT round(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p95_ms,
	(SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p99_ms
FROM (SELECT count(*) AS queued,
			 count(*) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()) AS due,
			 min(x.next_attempt_at) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()) AS oldest_due
	  FROM alipayplus.cancellations x
	  WHERE x.state = 'CANCELLING' AND NOT x.needs_attention) q;
COMMENT ON VIEW alipayplus.stats IS
	'Queue depth, the oldest due row, and the last hour''s attempts by outcome with latency percentiles';
REVOKE ALL ON alipayplus.stats FROM PUBLIC;
