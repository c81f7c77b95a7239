--
-- pipeline: the claim-then-call processor (src/processor.c, issue 16):
-- a request is on record, committed, before it leaves; its answer
-- completes that record once; runs are recorded from their start
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
RESET client_min_messages;

-- the claim: a leased row and an attempt "no answer yet" carrying the
-- request it will send
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'pl-1');
SELECT kind, sent_field, sent_id, attempt_id IS NOT NULL AS has_attempt
FROM alipayplus._claim(NULL, 10, '2026-01-01T00:00:00+08:00', 'pipeline test',
	interval '1 minute', '{}');
SELECT result_status, result_code, request_time, completed_at IS NULL AS no_answer_yet,
	caller
FROM alipayplus.cancel_attempts WHERE sent_id = 'pl-1';
SELECT state, attempt_count, next_attempt_at > now() + interval '50 seconds' AS leased
FROM alipayplus.cancellations WHERE sent_id = 'pl-1';
-- leased: not claimed again
SELECT count(*) AS claimed_again FROM alipayplus._claim(NULL, 10, 'x', 'pipeline test',
	interval '1 minute', '{}');

-- the attempts guard: a request on record is completed once, and nothing else
SELECT errcheck($$UPDATE alipayplus.cancel_attempts SET sent_id = 'pl-other'
	WHERE sent_id = 'pl-1'$$);
SELECT errcheck($$UPDATE alipayplus.cancel_attempts SET request_time = 'other'
	WHERE sent_id = 'pl-1'$$);
SELECT errcheck($$UPDATE alipayplus.cancel_attempts SET result_code = 'SUCCESS',
	result_status = 'S' WHERE sent_id = 'pl-1'$$);
SELECT errcheck($$UPDATE alipayplus.cancel_attempts SET result_code = 'local.crashed',
	completed_at = clock_timestamp() WHERE sent_id = 'pl-1'$$);
SELECT errcheck($$UPDATE alipayplus.cancel_attempts SET result_code = 'SUCCESS',
	completed_at = clock_timestamp() WHERE sent_id = 'pl-1'$$);
SELECT result_code FROM alipayplus.cancel_attempts WHERE sent_id = 'pl-1';
SELECT errcheck($$DELETE FROM alipayplus.cancel_attempts WHERE sent_id = 'pl-1'$$);

-- an attempt left "no answer yet" by a run whose backend is gone: the next
-- run completes it as U local.crashed and says the run ended unfinished
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'pl-2');
INSERT INTO alipayplus.processor_runs (started_at, claimed, cancelled, retrying,
	attention, unanswered, busy, stopped_because, pid, backend_start, caller)
VALUES (now(), 1, 0, 0, 0, 0, 0, 'running', 0, now(), 'a lost run');
SELECT count(*) FROM alipayplus._claim(
	(SELECT max(run_id) FROM alipayplus.processor_runs), 1, '2026-01-01T00:00:01+08:00',
	'alipayplus_process_cancellations', interval '1 hour', '{}');
SELECT claimed, cancelled, retrying, unanswered FROM alipayplus_process_cancellations();
SELECT result_status, result_code, completed_at IS NOT NULL AS completed
FROM alipayplus.cancel_attempts WHERE sent_id = 'pl-2' ORDER BY attempt_id;
SELECT state, attempt_count, last_result_code FROM alipayplus.cancellations
WHERE sent_id = 'pl-2';
SELECT caller, left(stopped_because, 60) AS stopped_because, finished_at IS NOT NULL AS finished
FROM alipayplus.processor_runs ORDER BY run_id;

-- (out of the way of what follows)
UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
WHERE sent_id IN ('pl-1', 'pl-2');

-- a run's row: its backend, its caller, finished with its reason
SELECT pid = pg_backend_pid() AS this_backend,
	backend_start = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS same_start,
	caller, stopped_because, finished_at >= started_at AS finished
FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;

-- a verified S: the claimed attempt is completed with it, and cancelled_at
-- is when that answer came, not when the transaction began
BEGIN;
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'pl-3');
SELECT pg_sleep(0.3);
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT a.result_status, a.result_code, a.completed_at IS NOT NULL AS completed,
	c.cancelled_at = a.completed_at AS cancelled_when_answered,
	c.cancelled_at > now() + interval '0.25 seconds' AS not_the_transaction_start,
	c.cancelled_at >= a.attempted_at AS after_the_request
FROM alipayplus.cancel_attempts a JOIN alipayplus.cancellations c USING (cancellation_id)
WHERE c.sent_id = 'pl-3';
COMMIT;

-- the SELECT form refills a slot as soon as its answer is settled: with
-- two slots, the second slow call is sent while the first is still
-- waiting (a window at a time would send it after the first answered)
SET alipayplus.max_concurrency = 2;
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'slow-1500-pl-a');
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'pl-b');
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'slow-1500-pl-c');
SELECT sent_id FROM alipayplus.cancellations
WHERE state = 'CANCELLING' AND next_attempt_at <= now() ORDER BY next_attempt_at, cancellation_id;
SELECT claimed, cancelled, elapsed_ms < 2800 AS in_one_slow_call FROM alipayplus_process_cancellations();
SELECT (SELECT attempted_at FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-1500-pl-c')
	< (SELECT completed_at FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-1500-pl-a')
	AS sent_before_the_first_answered;
RESET alipayplus.max_concurrency;

-- a CALL cut by the caller's statement_timeout while the gateway is still
-- answering: the call is recorded as local.statement_timeout (never the
-- gateway's local.timeout), the run as interrupted, then 57014
SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'slow-4000-pl-st');
SET alipayplus.timeout_ms = 10000;
SET statement_timeout = '1s';
CALL alipayplus_run_cancellations();
RESET statement_timeout;
RESET alipayplus.timeout_ms;
SELECT result_status, result_code, completed_at IS NOT NULL AS completed
FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-4000-pl-st';
SELECT state, needs_attention, last_result_code FROM alipayplus.cancellations
WHERE sent_id = 'slow-4000-pl-st';
SELECT caller, stopped_because, claimed, unanswered
FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
