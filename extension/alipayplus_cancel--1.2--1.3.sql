/*
 * alipayplus_cancel--1.2--1.3.sql
 *	  Upgrade of the alipayplus_cancel extension from 1.2 to 1.3 (also the
 *	  fourth step of every fresh install of 1.3).
 *
 * 1.3 changes, each in its own section below:
 * - issues 14 and 16: every request that leaves is on record before it
 *   leaves.  The committing processor (alipayplus_run_cancellations,
 *   alipayplus_process_backlog) claims a window and commits an attempt row
 *   ("no answer yet") for each call before the calls are made, makes the
 *   calls holding no lock, and completes each attempt with its answer in
 *   another short transaction; an attempt left without an answer (query
 *   cancel, statement_timeout, pg_terminate_backend, crash, an expired
 *   claim) is completed as local.interrupted / local.statement_timeout /
 *   local.crashed and counts as U.  processor_runs gets its row when a run
 *   starts; a run whose backend ended recognisably says so.  A call cut
 *   short by the caller's own statement_timeout or time_budget is no longer
 *   reported as the gateway's silence (local.statement_timeout,
 *   local.time_budget).  cancelled_at is the time the verified S arrived.
 *   Tables gain columns (no rewrite); functions that change are replaced,
 *   so no grant is lost; the one new function the procedures need is
 *   granted to whoever could already run the processor.
 */

\echo Use "ALTER EXTENSION alipayplus_cancel UPDATE TO '1.3'" to load this file. \quit

/* ---- issues 14 and 16: claim, call, settle; every request on record ---- */

/*
 * An attempt is written when its request is about to leave, with
 * result_code 'local.no_answer_yet', and completed when the answer (or the
 * reason there is none) is known: completed_at.  The request time is
 * known only once the request is signed, just before it leaves.
 */
ALTER TABLE alipayplus.cancel_attempts
	ALTER COLUMN request_time DROP NOT NULL,
	ADD COLUMN completed_at timestamptz,
	ADD COLUMN run_id bigint;
UPDATE alipayplus.cancel_attempts x SET completed_at = x.attempted_at;
CREATE INDEX cancel_attempts_no_answer_yet ON alipayplus.cancel_attempts (cancellation_id)
	WHERE result_code = 'local.no_answer_yet';
COMMENT ON TABLE alipayplus.cancel_attempts IS
	'One row per cancelPayment HTTP attempt, written before the request leaves (local.no_answer_yet) and completed with its answer; never key material or signatures';
COMMENT ON COLUMN alipayplus.cancel_attempts.completed_at IS
	'When the answer (or the reason there is none) was recorded; for an S, the cancellation time';
COMMENT ON COLUMN alipayplus.cancel_attempts.run_id IS
	'The processor run that made the attempt (alipayplus.processor_runs), if any';

/*
 * A run's row is written when it starts (finished_at NULL, stopped_because
 * 'running') and finished when it stops.  pid and backend_start name the
 * backend, so that a run whose backend ended without finishing it
 * (pg_terminate_backend, a crash, kill -9) is recognised and said so.
 */
ALTER TABLE alipayplus.processor_runs
	ALTER COLUMN finished_at DROP NOT NULL,
	ADD COLUMN pid integer,
	ADD COLUMN backend_start timestamptz,
	ADD COLUMN caller text;
COMMENT ON TABLE alipayplus.processor_runs IS
	'One row per processor run, written when it starts and finished when it stops; finished_at NULL with stopped_because ''running'' is a run in progress, ''ended unfinished: ...'' one whose backend ended';

INSERT INTO alipayplus.result_policy (result_code, action, note, builtin) VALUES
	('local.no_answer_yet', 'retry', 'the request is on its way; its answer is not recorded yet', true),
	('local.interrupted', 'retry', 'no answer: a query cancel ended the call after the request left; the outcome is unknown', true),
	('local.statement_timeout', 'retry', 'no answer before the caller''s statement_timeout ended the call; the outcome is unknown', true),
	('local.time_budget', 'retry', 'no answer before the run''s time_budget ended the call; the outcome is unknown', true),
	('local.crashed', 'retry', 'no answer: the backend making the call ended (pg_terminate_backend, a crash) or its claim expired before the answer was recorded; the outcome is unknown', true);

/* Record an answer for a ledger row and apply it; with p_attempt, complete that attempt */
CREATE FUNCTION alipayplus._settle(c alipayplus.cancellations, r record,
	p_caller text, p_attempt bigint)
RETURNS alipayplus.cancel_attempts
AS 'MODULE_PATHNAME', 'alipayplus_settle'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._settle(alipayplus.cancellations, record, text, bigint) FROM PUBLIC;

/*
 * Complete an attempt that got no answer (p_code: local.interrupted,
 * local.statement_timeout, local.crashed) and apply it as a U, unless it
 * has been completed already.
 */
CREATE FUNCTION alipayplus._complete_unanswered(p_attempt bigint, p_code text,
	p_detail text, p_caller text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a alipayplus.cancel_attempts;
	c alipayplus.cancellations;
	r record;
BEGIN
	SELECT * INTO a FROM alipayplus.cancel_attempts x
	WHERE x.attempt_id = p_attempt AND x.result_code = 'local.no_answer_yet';
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = a.cancellation_id
	FOR UPDATE;
	SELECT a.sent_field AS sent_field, a.sent_id AS sent_id,
		a.request_time AS request_time, NULL::integer AS http_status,
		'U'::text AS result_status, p_code AS result_code,
		(SELECT p.note FROM alipayplus.result_policy p
		 WHERE p.result_code = p_code ORDER BY p.builtin LIMIT 1) AS result_message,
		NULL::text AS acquirer_id, NULL::text AS psp_id,
		NULL::boolean AS signature_verified, NULL::double precision AS latency_ms,
		p_detail AS error_detail
	INTO r;
	PERFORM alipayplus._settle(c, r, p_caller, a.attempt_id);
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._complete_unanswered(bigint, text, text, text) FROM PUBLIC;

/*
 * Runs whose backend ended while they were in progress are said so, and
 * the attempts nobody will complete (their run's backend ended, or their
 * claim expired) are completed as local.crashed: U, retried with the same
 * parameters.  Rows being settled right now are skipped.
 */
CREATE FUNCTION alipayplus._reap()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	UPDATE alipayplus.processor_runs x SET
		stopped_because = 'ended unfinished: its backend exited during the run (pg_terminate_backend, a crash or kill); its calls without an answer are recorded as local.crashed'
	WHERE x.finished_at IS NULL AND x.stopped_because = 'running'
		AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(x.pid) s
						WHERE s.backend_start = x.backend_start);
	FOR t IN
		SELECT a.attempt_id,
			CASE WHEN p.stopped_because LIKE 'ended unfinished%'
				 THEN format('processor run %s''s backend ended before the answer was recorded', a.run_id)
				 ELSE format('the claim expired at %s without an answer recorded', c.next_attempt_at) END AS why
		FROM alipayplus.cancel_attempts a
		JOIN alipayplus.cancellations c ON c.cancellation_id = a.cancellation_id
		LEFT JOIN alipayplus.processor_runs p ON p.run_id = a.run_id
		WHERE a.result_code = 'local.no_answer_yet'
			AND (c.next_attempt_at <= pg_catalog.clock_timestamp()
				 OR p.stopped_because LIKE 'ended unfinished%'
				 OR p.finished_at IS NOT NULL)
		ORDER BY a.attempt_id
		FOR UPDATE OF c SKIP LOCKED
	LOOP
		PERFORM alipayplus._complete_unanswered(t.attempt_id, 'local.crashed', t.why,
												'alipayplus_processor');
	END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._reap() FROM PUBLIC;

/* A run's row, written when it starts */
CREATE FUNCTION alipayplus._run_begin(p_caller text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_run bigint;
BEGIN
	PERFORM alipayplus._reap();
	INSERT INTO alipayplus.processor_runs AS x
		(started_at, finished_at, claimed, cancelled, retrying, attention,
		 unanswered, busy, stopped_because, pid, backend_start, caller)
	VALUES (pg_catalog.clock_timestamp(), NULL, 0, 0, 0, 0, 0, 0, 'running',
			pg_catalog.pg_backend_pid(),
			(SELECT s.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) s),
			p_caller)
	RETURNING x.run_id INTO v_run;
	RETURN v_run;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._run_begin(text) FROM PUBLIC;

/*
 * Claim a window: up to p_width due rows (SKIP LOCKED, none of p_skip),
 * each one's bound order taken without waiting (a locked order is left
 * for later and returned in busy; one that cannot be used is flagged), its
 * claim held by moving next_attempt_at a lease ahead (alipayplus.timeout_ms
 * and 10 seconds), and an attempt written for it, "no answer yet".
 * Before claiming, says in stop why the run should stop instead, if it
 * should; after claiming less than a full window, 'nothing due'.
 */
CREATE FUNCTION alipayplus._claim(p_run bigint, p_width integer, p_deadline timestamptz,
	p_skip bigint[], p_caller text,
	OUT attempts bigint[], OUT busy bigint[], OUT flagged integer, OUT stop text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_claimed alipayplus.cancellations[];
	c alipayplus.cancellations;
	v_err text;
	v_attempt bigint;
	v_st interval := current_setting('statement_timeout')::interval;
	v_lease interval := current_setting('alipayplus.timeout_ms')::interval + interval '10 seconds';
	p alipayplus.processor_runs;
BEGIN
	attempts := '{}';
	busy := '{}';
	flagged := 0;
	SELECT * INTO p FROM alipayplus.processor_runs x WHERE x.run_id = p_run;
	IF p_width < 1 THEN
		stop := 'max_count reached';
	ELSIF pg_catalog.clock_timestamp() >= p_deadline THEN
		stop := 'time budget used';
	ELSIF v_st > interval '0'
		  AND pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()
			  > v_st - interval '500 ms' THEN
		stop := 'statement_timeout near';
	ELSIF p.claimed >= 3 AND p.unanswered = p.claimed THEN
		/* a gateway that answers nothing: do not spend the run on it */
		stop := 'gateway not answering';
	END IF;
	IF stop IS NOT NULL THEN
		RETURN;
	END IF;

	PERFORM alipayplus._reap();
	v_claimed := ARRAY(
		SELECT x FROM alipayplus.cancellations x
		WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
			AND x.next_attempt_at <= pg_catalog.clock_timestamp()
			AND x.cancellation_id <> ALL (p_skip)
		ORDER BY x.next_attempt_at, x.cancellation_id
		LIMIT p_width
		FOR UPDATE SKIP LOCKED);
	IF cardinality(v_claimed) < p_width THEN
		stop := 'nothing due';
	END IF;
	FOREACH c IN ARRAY v_claimed LOOP
		v_err := NULL;
		BEGIN
			PERFORM alipayplus._lock_order(c.sent_field, c.sent_id, true);
		EXCEPTION
			WHEN lock_not_available THEN
				busy := busy || c.cancellation_id;
				CONTINUE;
			WHEN OTHERS THEN
				GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT;
		END;
		IF v_err IS NOT NULL THEN
			UPDATE alipayplus.cancellations x SET
				needs_attention = true, next_attempt_at = NULL,
				attention_reason = format('the bound order cannot be used: %s; fix the order row, then run alipayplus_requeue_cancellation(%s)',
										  v_err, x.cancellation_id)
			WHERE x.cancellation_id = c.cancellation_id;
			flagged := flagged + 1;
			CONTINUE;
		END IF;
		UPDATE alipayplus.cancellations x SET
			next_attempt_at = pg_catalog.clock_timestamp() + v_lease
		WHERE x.cancellation_id = c.cancellation_id;
		INSERT INTO alipayplus.cancel_attempts AS x
			(cancellation_id, sent_field, sent_id, result_status, result_code,
			 result_message, caller, run_id)
		VALUES (c.cancellation_id, c.sent_field, c.sent_id, 'U', 'local.no_answer_yet',
				'no answer yet: the request is on its way', p_caller, p_run)
		RETURNING x.attempt_id INTO v_attempt;
		attempts := attempts || v_attempt;
	END LOOP;
	UPDATE alipayplus.processor_runs x SET
		claimed = x.claimed + cardinality(attempts) + flagged,
		attention = x.attention + flagged,
		busy = x.busy + cardinality(_claim.busy)
	WHERE x.run_id = p_run;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._claim(bigint, integer, timestamptz, bigint[], text) FROM PUBLIC;

/*
 * Make the calls of a claimed window (the attempts p_attempts of run
 * p_run still waiting for their answer), all at once, ending by
 * p_deadline, and complete each attempt with its answer: the ledger row is
 * locked only now, to settle it.  A call that could not start in time was
 * not sent: its attempt is removed and its row due again.  Adds the
 * outcomes to the run's row.
 */
CREATE FUNCTION alipayplus._call_window(p_run bigint, p_attempts bigint[],
	p_deadline timestamptz, p_caller text,
	OUT claimed integer, OUT cancelled integer, OUT retrying integer,
	OUT attention integer, OUT unanswered integer, OUT last_error text,
	OUT interrupted text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	w alipayplus.cancel_attempts[];
	a alipayplus.cancel_attempts;
	c alipayplus.cancellations;
	r record;
BEGIN
	claimed := 0;
	cancelled := 0;
	retrying := 0;
	attention := 0;
	unanswered := 0;
	PERFORM pg_catalog.set_config('alipayplus_cancel.interrupted', 'false', true);
	w := ARRAY(
		SELECT x FROM alipayplus.cancel_attempts x
		JOIN unnest(p_attempts) WITH ORDINALITY u (id, ord) ON x.attempt_id = u.id
		WHERE x.run_id = p_run AND x.result_code = 'local.no_answer_yet'
		ORDER BY u.ord);
	IF cardinality(w) = 0 THEN
		RETURN;
	END IF;
	FOR r IN
		SELECT * FROM alipayplus._call_cancel_many(
			ARRAY(SELECT x.sent_field FROM unnest(w) WITH ORDINALITY x ORDER BY x.ordinality),
			ARRAY(SELECT x.sent_id FROM unnest(w) WITH ORDINALITY x ORDER BY x.ordinality),
			greatest((extract(epoch FROM p_deadline - pg_catalog.clock_timestamp()) * 1000)::integer, 1))
	LOOP
		a := w[r.ord];
		IF r.result_code = 'local.not_sent' THEN
			/* the run's time ran out before this call started: nothing left */
			DELETE FROM alipayplus.cancel_attempts x WHERE x.attempt_id = a.attempt_id;
			UPDATE alipayplus.cancellations x SET next_attempt_at = pg_catalog.clock_timestamp()
			WHERE x.cancellation_id = a.cancellation_id AND x.state = 'CANCELLING'
				AND NOT x.needs_attention;
			claimed := claimed - 1;
			CONTINUE;
		END IF;
		SELECT * INTO c FROM alipayplus.cancellations x
		WHERE x.cancellation_id = a.cancellation_id
		FOR UPDATE;
		a := alipayplus._settle(c, r, p_caller, a.attempt_id);
		IF alipayplus._unanswered(a.result_code) THEN
			unanswered := unanswered + 1;
			last_error := format('%s: %s', a.result_code, a.error_detail);
		END IF;
		SELECT * INTO c FROM alipayplus.cancellations x
		WHERE x.cancellation_id = c.cancellation_id;
		IF c.needs_attention THEN
			attention := attention + 1;
		ELSIF c.state = 'CANCELLED' THEN
			cancelled := cancelled + 1;
		ELSE
			retrying := retrying + 1;
		END IF;
	END LOOP;
	interrupted := nullif(nullif(current_setting('alipayplus_cancel.interrupted', true), 'false'), '');
	UPDATE alipayplus.processor_runs x SET
		claimed = x.claimed + _call_window.claimed,
		cancelled = x.cancelled + _call_window.cancelled,
		retrying = x.retrying + _call_window.retrying,
		attention = x.attention + _call_window.attention,
		unanswered = x.unanswered + _call_window.unanswered
	WHERE x.run_id = p_run;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._call_window(bigint, bigint[], timestamptz, text) FROM PUBLIC;

/*
 * A run stops: the attempts of p_attempts still without an answer (the
 * window in flight when an interrupt came, p_interrupt its message) are
 * completed as local.statement_timeout or local.interrupted, and the run's
 * row finished with the reason it stopped.
 */
CREATE FUNCTION alipayplus._run_end(p_run bigint, p_stop text,
	p_attempts bigint[] DEFAULT NULL, p_interrupt text DEFAULT NULL)
RETURNS alipayplus.processor_runs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_attempt bigint;
	v_code text := CASE WHEN p_interrupt LIKE '%statement timeout%' THEN 'local.statement_timeout'
						ELSE 'local.interrupted' END;
	p alipayplus.processor_runs;
BEGIN
	FOREACH v_attempt IN ARRAY coalesce(p_attempts, '{}') LOOP
		PERFORM alipayplus._complete_unanswered(v_attempt, v_code,
			format('the call was ended by "%s" before its answer was recorded; the request had left, so Alipay+ may have acted on it',
				   coalesce(p_interrupt, p_stop)),
			'alipayplus_processor');
	END LOOP;
	UPDATE alipayplus.processor_runs x SET
		finished_at = pg_catalog.clock_timestamp(),
		stopped_because = CASE WHEN p_interrupt IS NOT NULL
							   THEN format('interrupted: %s', p_interrupt) ELSE p_stop END
	WHERE x.run_id = p_run
	RETURNING * INTO p;
	RETURN p;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._run_end(bigint, text, bigint[], text) FROM PUBLIC;

/*
 * The processor's steps for the committing procedures, which commit
 * between them (a procedure that commits runs with its caller's rights, so
 * they reach the ledger through this one SECURITY DEFINER function):
 *	begin	a run's row; run_id
 *	claim	claim a window (width rows at most, until deadline), skipping
 *			the rows in ids; attempts, busy, stop
 *	call	make the calls of the attempts in ids and settle their answers
 *	end		finish the run with reason (and, after an interrupt, complete
 *			the attempts in ids that have no answer)
 * Every step but begin works only on a run of the calling backend that is
 * still in progress.  Counts are what the step did (end: the whole run's).
 */
CREATE FUNCTION @extschema@.alipayplus_processor_step(step text, run bigint DEFAULT NULL,
	width integer DEFAULT NULL, deadline timestamptz DEFAULT NULL,
	ids bigint[] DEFAULT NULL, reason text DEFAULT NULL, interrupt text DEFAULT NULL)
RETURNS TABLE (run_id bigint, attempts bigint[], busy bigint[], claimed integer,
	cancelled integer, retrying integer, attention integer, unanswered integer,
	stop text, last_error text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	v_run bigint := $2;
	p alipayplus.processor_runs;
	cl record;
	w record;
BEGIN
	IF $1 = 'begin' THEN
		PERFORM alipayplus._check_config();
		v_run := alipayplus._run_begin('alipayplus_processor');
		RETURN QUERY SELECT v_run, NULL::bigint[], NULL::bigint[], 0, 0, 0, 0, 0,
			NULL::text, NULL::text;
		RETURN;
	END IF;
	SELECT * INTO p FROM alipayplus.processor_runs x
	WHERE x.run_id = v_run AND x.finished_at IS NULL AND x.stopped_because = 'running'
		AND x.pid = pg_catalog.pg_backend_pid()
		AND x.backend_start = (SELECT s.backend_start
							   FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) s);
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('processor run %s is not a run of this session in progress', coalesce(v_run::text, 'NULL'));
	END IF;
	CASE $1
		WHEN 'claim' THEN
			cl := alipayplus._claim(v_run, coalesce($3, 0), coalesce($4, pg_catalog.clock_timestamp()),
									coalesce($5, '{}'), 'alipayplus_processor');
			RETURN QUERY SELECT v_run, cl.attempts, cl.busy,
				cardinality(cl.attempts) + cl.flagged, 0, 0, cl.flagged, 0, cl.stop, NULL::text;
		WHEN 'call' THEN
			w := alipayplus._call_window(v_run, coalesce($5, '{}'),
										 coalesce($4, pg_catalog.clock_timestamp()), 'alipayplus_processor');
			/* stop: the interrupt that came while an answer was applied, if one did */
			RETURN QUERY SELECT v_run, NULL::bigint[], NULL::bigint[], w.claimed, w.cancelled,
				w.retrying, w.attention, w.unanswered, w.interrupted, w.last_error;
		WHEN 'end' THEN
			p := alipayplus._run_end(v_run, coalesce($6, 'nothing due'), $5, $7);
			RETURN QUERY SELECT v_run, NULL::bigint[], NULL::bigint[], p.claimed, p.cancelled,
				p.retrying, p.attention, p.unanswered, p.stopped_because, NULL::text;
		ELSE
			RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
				MESSAGE = format('unknown processor step %L', $1),
				HINT = 'The steps are begin, claim, call and end.';
	END CASE;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_processor_step(text, bigint, integer, timestamptz, bigint[], text, text) IS
	'The processor''s steps (begin, claim, call, end) for the committing procedures; grant it with alipayplus_process_cancellations';
REVOKE ALL ON FUNCTION @extschema@.alipayplus_processor_step(text, bigint, integer, timestamptz, bigint[], text, text) FROM PUBLIC;

/* Whoever could run the processor keeps that right: the procedures now need this step function too */
DO $$
DECLARE
	g record;
BEGIN
	FOR g IN
		SELECT DISTINCT a.grantee
		FROM pg_catalog.pg_proc f, LATERAL pg_catalog.aclexplode(f.proacl) a
		WHERE f.oid = '@extschema@.alipayplus_process_cancellations(integer, interval, bigint)'::pg_catalog.regprocedure
			AND a.privilege_type = 'EXECUTE' AND a.grantee <> f.proowner AND a.grantee <> 0
	LOOP
		EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.alipayplus_processor_step(text, bigint, integer, timestamptz, bigint[], text, text) TO %I',
					   pg_catalog.pg_get_userbyid(g.grantee));
	END LOOP;
END;
$$;

/*
 * The processor inside the caller's transaction: the same claim, call and
 * settle, all in that one transaction (an interrupt or error there rolls
 * back the whole run, its attempts and its row with it, like any
 * statement).  continue_run adds this run's counts to an earlier run's row.
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
	v_deadline timestamptz;
	v_skip bigint[] := '{}';
	v_concurrency integer;
	n_claimed integer := 0;
	n_cancelled integer := 0;
	n_retrying integer := 0;
	n_attention integer := 0;
	n_unanswered integer := 0;
	n_busy integer := 0;
	v_stop text;
	v_interrupt text;
	v_last_error text;
	v_run bigint;
	cl record;
	w record;
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
	v_deadline := v_start + $2;
	IF $3 IS NOT NULL THEN
		UPDATE alipayplus.processor_runs x SET finished_at = NULL, stopped_because = 'running'
		WHERE x.run_id = $3
		RETURNING x.run_id INTO v_run;
	END IF;
	IF v_run IS NULL THEN
		v_run := alipayplus._run_begin('alipayplus_process_cancellations');
	END IF;

	LOOP
		cl := alipayplus._claim(v_run, least(v_concurrency, $1 - n_claimed), v_deadline,
								v_skip, 'alipayplus_process_cancellations');
		n_claimed := n_claimed + cardinality(cl.attempts) + cl.flagged;
		n_attention := n_attention + cl.flagged;
		n_busy := n_busy + cardinality(cl.busy);
		v_skip := v_skip || cl.busy;
		IF cardinality(cl.attempts) > 0 THEN
			w := alipayplus._call_window(v_run, cl.attempts, v_deadline,
										 'alipayplus_process_cancellations');
			n_claimed := n_claimed + w.claimed;
			n_cancelled := n_cancelled + w.cancelled;
			n_retrying := n_retrying + w.retrying;
			n_attention := n_attention + w.attention;
			n_unanswered := n_unanswered + w.unanswered;
			v_last_error := coalesce(w.last_error, v_last_error);
			v_interrupt := w.interrupted;
		END IF;
		v_stop := cl.stop;
		EXIT WHEN v_stop IS NOT NULL OR v_interrupt IS NOT NULL;
	END LOOP;
	PERFORM alipayplus._run_end(v_run, v_stop, NULL, v_interrupt);
	IF v_interrupt IS NOT NULL THEN
		/* the caller's cancel or statement_timeout is the caller's answer */
		RAISE EXCEPTION USING ERRCODE = 'query_canceled', MESSAGE = v_interrupt,
			DETAIL = format('It came while processor run %s applied an answer; the run rolls back with this transaction.', v_run);
	END IF;

	RETURN QUERY SELECT v_run, n_claimed, n_cancelled, n_retrying, n_attention,
		n_unanswered, n_busy,
		round(extract(epoch FROM pg_catalog.clock_timestamp() - v_start) * 1000, 1),
		v_last_error;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) IS
	'The processor inside the caller''s transaction: claim due rows, call, settle, bounded by max_count and time_budget (an interrupt rolls the whole run back)';

/*
 * The committing processor, shared by both procedures: claim a window and
 * commit (the attempts are on record before any request leaves), make the
 * calls and settle them and commit, again until the run stops.  A query
 * cancel or statement_timeout is caught: the window's calls without an
 * answer are completed as local.interrupted or local.statement_timeout,
 * the run's row says so, all of it is committed, and then the same error
 * (SQLSTATE 57014, its own message) is raised.  pg_terminate_backend and
 * crashes cannot be caught: the next run (or the lease) completes what
 * they left.  With progress, a NOTICE every that often.  Returns the
 * run's row.
 */
CREATE OR REPLACE PROCEDURE @extschema@.alipayplus_process_backlog(max_count integer DEFAULT 1000000,
	time_budget interval DEFAULT '1 hour', progress interval DEFAULT '5 seconds')
LANGUAGE plpgsql
AS $$
DECLARE
	v_start timestamptz := pg_catalog.clock_timestamp();
	v_deadline timestamptz := pg_catalog.clock_timestamp() + time_budget;
	v_said timestamptz := pg_catalog.clock_timestamp();
	v_run bigint;
	v_skip bigint[] := '{}';
	v_window bigint[];
	v_stop text;
	v_interrupt text;
	v_state text;
	v_width integer;
	r record;
	n integer := 0;
	n_cancelled integer := 0;
	n_unanswered integer := 0;
	v_last_error text;
	v_due bigint;
	v_rate float8;
BEGIN
	IF max_count IS NULL OR max_count < 1 THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'max_count must be at least 1';
	END IF;
	IF time_budget IS NULL OR time_budget <= interval '0' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'time_budget must be positive';
	END IF;
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	SELECT x.run_id INTO v_run FROM @extschema@.alipayplus_processor_step('begin') x;
	COMMIT;
	LOOP
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		v_window := NULL;
		v_width := least(max_count - n, current_setting('alipayplus.max_concurrency')::integer);
		BEGIN
			SELECT * INTO r FROM @extschema@.alipayplus_processor_step('claim', v_run,
				v_width, v_deadline, v_skip) x;
		EXCEPTION WHEN query_canceled THEN
			GET STACKED DIAGNOSTICS v_interrupt = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
		END;
		EXIT WHEN v_interrupt IS NOT NULL;
		v_window := r.attempts;
		v_skip := v_skip || r.busy;
		n := n + r.claimed;
		v_stop := r.stop;
		COMMIT;
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		IF cardinality(v_window) > 0 THEN
			BEGIN
				SELECT * INTO r FROM @extschema@.alipayplus_processor_step('call', v_run,
					deadline => v_deadline, ids => v_window) x;
				n := n + r.claimed;
				n_cancelled := n_cancelled + r.cancelled;
				n_unanswered := n_unanswered + r.unanswered;
				v_last_error := coalesce(r.last_error, v_last_error);
				/* an interrupt that came while an answer was applied: its message */
				v_interrupt := r.stop;
			EXCEPTION WHEN query_canceled THEN
				GET STACKED DIAGNOSTICS v_interrupt = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
			END;
			EXIT WHEN v_interrupt IS NOT NULL;
			COMMIT;
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		END IF;
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
		EXIT WHEN v_stop IS NOT NULL;
	END LOOP;

	/* the interrupt, if any, was caught: finish the run and commit first */
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	SELECT * INTO r FROM @extschema@.alipayplus_processor_step('end', v_run,
		ids => v_window, reason => v_stop, interrupt => v_interrupt) x;
	COMMIT;
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	IF v_interrupt IS NOT NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'query_canceled', MESSAGE = v_interrupt,
			DETAIL = format('Processor run %s stopped: %s answers and the attempts of the calls it cut short are committed (see alipayplus.processor_runs).',
							v_run, n);
	END IF;
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

/* pg_cron's procedure: the same, without progress NOTICEs */
CREATE OR REPLACE PROCEDURE @extschema@.alipayplus_run_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds')
LANGUAGE plpgsql
AS $$
BEGIN
	CALL @extschema@.alipayplus_process_backlog(max_count, time_budget, NULL);
END;
$$;
COMMENT ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) IS
	'For pg_cron: the committing processor (alipayplus_process_backlog without progress); fails (ZA004) when the gateway answered nothing, 57014 when cancelled';

/* Whoever could run either procedure can run the other, which it now calls */
DO $$
DECLARE
	g record;
BEGIN
	FOR g IN
		SELECT DISTINCT a.grantee
		FROM pg_catalog.pg_proc f, LATERAL pg_catalog.aclexplode(f.proacl) a
		WHERE f.oid = '@extschema@.alipayplus_run_cancellations(integer, interval)'::pg_catalog.regprocedure
			AND a.privilege_type = 'EXECUTE' AND a.grantee <> f.proowner AND a.grantee <> 0
	LOOP
		EXECUTE format('GRANT EXECUTE ON PROCEDURE @extschema@.alipayplus_process_backlog(integer, interval, interval) TO %I',
					   pg_catalog.pg_get_userbyid(g.grantee));
	END LOOP;
END;
$$;
