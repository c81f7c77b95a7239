--
-- backlog: many calls in flight, windows within a time budget, queueing
-- many cancellations at once, stale orders, the stats view
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
RESET client_min_messages;
SELECT extversion FROM pg_extension WHERE extname = 'alipayplus_cancel';

-- eight slow answers, eight calls in flight at once on eight connections
SET alipayplus.max_concurrency = 8;
SELECT count(*) FROM (
	SELECT alipayplus_request_cancel(payment_request_id => 'slow-400-bl-' || i)
	FROM generate_series(1, 8) i) x;
SELECT gw_mark();
SELECT claimed, cancelled, retrying, attention, unanswered FROM alipayplus_process_cancellations();
SELECT count(*) AS requests, max((j->>'inflight')::int) AS most_in_flight,
	count(DISTINCT j->>'peer') AS connections
FROM gw_log() WHERE j->>'id' LIKE 'slow-400-bl-%';
SELECT count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled
FROM alipayplus.cancellations WHERE sent_id LIKE 'slow-400-bl-%';

-- the connections are kept: the next window reuses them
SELECT count(*) FROM (
	SELECT alipayplus_request_cancel(payment_request_id => 'slow-100-bl2-' || i)
	FROM generate_series(1, 8) i) x;
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT count(DISTINCT j->>'peer') AS connections_for_both_windows
FROM gw_log() WHERE j->>'id' LIKE 'slow-%-bl%';

-- one at a time when max_concurrency is 1
SET alipayplus.max_concurrency = 1;
SELECT count(*) FROM (
	SELECT alipayplus_request_cancel(payment_request_id => 'slow-100-one-' || i)
	FROM generate_series(1, 3) i) x;
SELECT gw_mark();
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT max((j->>'inflight')::int) AS most_in_flight FROM gw_log() WHERE j->>'id' LIKE 'slow-100-one-%';
SET alipayplus.max_concurrency = 16;

-- every outcome of one window goes through the same ledger rules
SELECT count(*) FROM (
	SELECT alipayplus_request_cancel(payment_request_id => id)
	FROM unnest(ARRAY['bl-s-1', 'f-PROCESS_FAIL-bl-2', 'u-UNKNOWN_EXCEPTION-bl-3',
					  'f-INVALID_SIGNATURE-bl-4', 'badsig-bl-5', 'unsigned-S-bl-6']) id) x;
SELECT claimed, cancelled, retrying, attention FROM alipayplus_process_cancellations();
SELECT sent_id, state, last_result_status, last_result_code, needs_attention,
	next_attempt_at IS NOT NULL AS retry_queued
FROM alipayplus.cancellations
WHERE sent_id IN ('bl-s-1', 'f-PROCESS_FAIL-bl-2', 'u-UNKNOWN_EXCEPTION-bl-3',
				  'f-INVALID_SIGNATURE-bl-4', 'badsig-bl-5', 'unsigned-S-bl-6')
ORDER BY cancellation_id;
-- (park the retries, so that they do not join the windows below)
UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
WHERE next_attempt_at IS NOT NULL;

-- a run claims no more than it can finish within its time budget: the
-- calls in flight end when the budget does, as local.time_budget (the
-- run's own limit, never the gateway's local.timeout)
SELECT count(*) FROM (
	SELECT alipayplus_request_cancel(payment_request_id => 'slow-3000-budget-' || i)
	FROM generate_series(1, 4) i) x;
SELECT claimed, retrying, unanswered FROM alipayplus_process_cancellations(100, '700 ms');
SELECT stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
SELECT count(*), min(last_result_code), max(last_result_code)
FROM alipayplus.cancellations WHERE sent_id LIKE 'slow-3000-budget-%';
SELECT bool_and(a.latency_ms < 1500) AS ended_with_the_budget
FROM alipayplus.cancel_attempts a WHERE a.sent_id LIKE 'slow-3000-budget-%';
UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE sent_id LIKE 'slow-3000-budget-%';
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
WHERE next_attempt_at IS NOT NULL;

-- the backlog procedure: windows committed one by one
SET alipayplus.max_concurrency = 4;
SELECT count(*) FROM (
	SELECT alipayplus_request_cancel(payment_request_id => 'bl-proc-' || i)
	FROM generate_series(1, 10) i) x;
SET client_min_messages = warning;
CALL alipayplus_process_backlog(progress => NULL);
RESET client_min_messages;
SELECT claimed, cancelled, stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
SELECT count(*) FILTER (WHERE state = 'CANCELLED') FROM alipayplus.cancellations
WHERE sent_id LIKE 'bl-proc-%';
SET alipayplus.max_concurrency = 16;

-- queueing many at once: what cannot be cancelled is skipped and reported
CREATE TABLE bl_orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING',
	created_at timestamptz NOT NULL DEFAULT now());
SELECT alipayplus_bind_orders('bl_orders', 'req', 'st', 'CANCELLED', 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID', failed_value => 'FAILED',
	pending_values => ARRAY['PENDING']);
-- The orders' times do not depend on the time of day: the open ones were
-- initiated at the start of Alipay+'s day (UTC+8), which keeps them in
-- their cancel window until 00:15 tomorrow, and "stale" means older than
-- half of that age (just after midnight, the test waits a moment first).
DO $$
BEGIN
	IF now() - date_trunc('day', now(), 'Asia/Shanghai') < interval '3 seconds' THEN
		PERFORM pg_sleep(3);
	END IF;
END $$;
SELECT date_trunc('day', now(), 'Asia/Shanghai') AS day_start,
	(now() - date_trunc('day', now(), 'Asia/Shanghai')) / 2 AS stale_after \gset
INSERT INTO bl_orders (req, st, created_at) VALUES
	('bl-o-1', 'PENDING', :'day_start'::timestamptz + interval '2 ms'),
	('bl-o-2', 'PENDING', :'day_start'::timestamptz + interval '1 ms'),
	('bl-o-3', 'PENDING', now() - interval '3 days'),
	('bl-o-4', 'PAID', :'day_start'::timestamptz + interval '2 ms'),
	('bl-o-5', 'PENDING', now()),
	('bl-o-6', 'PENDING', :'day_start'::timestamptz);
SELECT alipayplus_note_refund('bl-o-6');
SELECT * FROM alipayplus_stale_orders(:'stale_after');
SELECT id, outcome,
	CASE WHEN outcome IN ('refund', 'invalid_id') THEN detail END AS detail
FROM alipayplus_request_cancel_all(
	ARRAY(SELECT alipayplus_stale_orders(:'stale_after')) || ARRAY['bl-o-1', '', 'x' || repeat('y', 70)]);
SELECT req, st FROM bl_orders ORDER BY req;
SELECT outcome, count(*) FROM alipayplus_request_cancel_all(ARRAY['bl-s-1', 'bl-new-1'])
GROUP BY 1 ORDER BY 1;
SELECT errcheck($$SELECT alipayplus_stale_orders(NULL)$$);

-- the stats view agrees with the ledger
SELECT s.queued = (SELECT count(*) FROM alipayplus.cancellations
				   WHERE state = 'CANCELLING' AND NOT needs_attention) AS queued_ok,
	s.due = (SELECT count(*) FROM alipayplus.cancellations
			 WHERE state = 'CANCELLING' AND NOT needs_attention AND next_attempt_at <= now()) AS due_ok,
	s.needing_attention = (SELECT count(*) FROM alipayplus.cancellations WHERE needs_attention) AS attention_ok,
	s.attempts_last_hour = (SELECT count(*) FROM alipayplus.cancel_attempts) AS attempts_ok,
	s.s_last_hour = (SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_status = 'S') AS s_ok,
	s.f_last_hour = (SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_status = 'F') AS f_ok,
	s.local_last_hour = (SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code LIKE 'local.%') AS local_ok,
	s.attempts_last_hour = s.s_last_hour + s.f_last_hour + s.u_last_hour + s.local_last_hour AS outcomes_add_up,
	s.latency_p50_ms = (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1)
						FROM alipayplus.cancel_attempts) AS p50_ok,
	s.latency_p50_ms <= s.latency_p95_ms AND s.latency_p95_ms <= s.latency_p99_ms AS percentiles_ordered,
	s.backends_calling
FROM alipayplus.stats s;
-- attempts older than an hour leave the figures
UPDATE alipayplus.cancel_attempts SET attempted_at = attempted_at - interval '2 hours'
WHERE sent_id LIKE 'slow-400-bl-%';
SELECT s.attempts_last_hour = (SELECT count(*) FROM alipayplus.cancel_attempts) - 8 AS old_ones_left_out
FROM alipayplus.stats s;

-- bounds of the setting
SELECT errcheck($$SET alipayplus.max_concurrency = 0$$);
SELECT errcheck($$SET alipayplus.max_concurrency = 1025$$);
SET alipayplus.max_concurrency = 1024;
RESET alipayplus.max_concurrency;
