--
-- ledger: the outbox, the processor, result policy, retries, attention,
-- late payment results, refunds and a bound orders table
--
-- start from an empty ledger (DROP EXTENSION takes the ledger with it)
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;

CREATE TABLE shop_orders (
	order_no bigint PRIMARY KEY,
	pay_req_id varchar(64) NOT NULL UNIQUE,
	pay_id text UNIQUE,
	status text NOT NULL DEFAULT 'PENDING',
	created_at timestamptz NOT NULL DEFAULT now()
);

-- binding: checked, quoted, guarded
SELECT errcheck($$SELECT alipayplus_bind_orders('shop_orders', 'nope', 'status', 'CANCELLED', 'CANCELLING')$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('shop_orders', 'pay_req_id', 'status', 'X', 'X')$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('no_such_table', 'pay_req_id', 'status', 'CANCELLED', 'CANCELLING')$$);
SELECT alipayplus_bind_orders('shop_orders', 'pay_req_id', 'status', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pay_id', initiated_at_column => 'created_at',
	paid_value => 'PAID', failed_value => 'FAILED');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'shop_orders'::regclass ORDER BY 1;

INSERT INTO shop_orders (order_no, pay_req_id, pay_id) VALUES
	(1, 'L-1', NULL),
	(2, 'seq-U.U.S-L-2', NULL),
	(3, 'f-PROCESS_FAIL-L-3', NULL),
	(4, 'L-4', 'PID-4'),
	(5, 'u-UNKNOWN_EXCEPTION-L-5', NULL),
	(6, 'f-INVALID_SIGNATURE-L-6', NULL),
	(7, 'f-BRAND_NEW_CODE-L-7', NULL),
	(8, 'L-8', NULL),
	(9, 'L-9', NULL),
	(10, 'L-10', NULL),
	(11, 'L-11', NULL);
UPDATE shop_orders SET created_at = '2025-01-15 12:00:00+08' WHERE order_no = 10;

-- the outbox is transactional: rolled back, nothing happened anywhere
SELECT gw_mark();
BEGIN;
SELECT state, payment_request_id, attempt_count, next_attempt_at <= now() AS due
FROM alipayplus_request_cancel(payment_request_id => 'L-1');
SELECT status FROM shop_orders WHERE order_no = 1;
ROLLBACK;
SELECT status FROM shop_orders WHERE order_no = 1;
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations;

-- committed: marked, queued, still no network call
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'L-1');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'seq-U.U.S-L-2');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'f-PROCESS_FAIL-L-3');
-- by paymentId: the bound order supplies the request id, which is what is sent
SELECT state, payment_request_id, payment_id FROM alipayplus_request_cancel(payment_id => 'PID-4');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'u-UNKNOWN_EXCEPTION-L-5');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'f-INVALID_SIGNATURE-L-6');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'f-BRAND_NEW_CODE-L-7');
-- asking twice changes nothing
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'L-1');
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations;
SELECT count(*) AS gateway_requests FROM gw_log();
SELECT order_no, status FROM shop_orders ORDER BY order_no;

-- from now on the order may only become CANCELLED
SELECT errcheck($$UPDATE shop_orders SET status = 'PAID' WHERE order_no = 1$$);
SELECT errcheck($$DELETE FROM shop_orders WHERE order_no = 1$$);
SELECT errcheck($$TRUNCATE shop_orders$$);
-- replication mode does not switch the guard off (ENABLE ALWAYS)
SET session_replication_role = replica;
SELECT errcheck($$UPDATE shop_orders SET status = 'PAID' WHERE order_no = 1$$);
RESET session_replication_role;
-- one processor run: every due row gets one attempt
SET alipayplus.max_attempts = 3;
SELECT claimed, cancelled, retrying, attention, unanswered
FROM alipayplus_process_cancellations();
SELECT payment_request_id, state, attempt_count, last_result_status, last_result_code,
	needs_attention, attention_reason
FROM alipayplus.cancellations ORDER BY cancellation_id;
SELECT order_no, status FROM shop_orders ORDER BY order_no;
-- nor does the ledger let go of its rows
SELECT errcheck($$UPDATE alipayplus.cancellations SET state = 'CANCELLING', cancelled_at = NULL WHERE payment_request_id = 'L-1'$$);
SELECT errcheck($$DELETE FROM alipayplus.cancellations WHERE payment_request_id = 'L-1'$$);
SELECT errcheck($$UPDATE alipayplus.cancellations SET state = 'PAID' WHERE payment_request_id = 'f-PROCESS_FAIL-L-3'$$);
SELECT errcheck($$TRUNCATE alipayplus.cancellations CASCADE$$);
-- the F retry comes on the slow schedule (8 x 200 ms base, half of it at least)
SELECT next_attempt_at - last_attempt_at >= interval '800 ms' AS slow_schedule
FROM alipayplus.cancellations WHERE payment_request_id = 'f-INVALID_SIGNATURE-L-6';
-- nothing more is due right now
SELECT claimed FROM alipayplus_process_cancellations();
-- park the slow F retry so that the runs below are deterministic
UPDATE alipayplus.cancellations SET next_attempt_at = 'infinity'
WHERE payment_request_id = 'f-INVALID_SIGNATURE-L-6';

-- U results are retried with the same parameters until S, or until the
-- attempt budget is spent
DO $$
BEGIN
	FOR i IN 1..40 LOOP
		EXIT WHEN NOT EXISTS (SELECT 1 FROM alipayplus.cancellations
							  WHERE state = 'CANCELLING' AND NOT needs_attention
								AND next_attempt_at < 'infinity');
		PERFORM pg_sleep(0.25);
		PERFORM alipayplus_process_cancellations();
	END LOOP;
END;
$$;
SELECT a.sent_field, a.sent_id, a.result_status, a.result_code, a.caller
FROM alipayplus.cancel_attempts a
JOIN alipayplus.cancellations c USING (cancellation_id)
WHERE c.payment_request_id IN ('seq-U.U.S-L-2', 'u-UNKNOWN_EXCEPTION-L-5')
ORDER BY a.sent_id, a.attempt_id;
SELECT count(DISTINCT (j->>'body')) AS distinct_bodies, count(*) AS requests
FROM gw_log() WHERE j->>'id' = 'seq-U.U.S-L-2';
SELECT payment_request_id, state, attempt_count, needs_attention, attention_reason
FROM alipayplus.cancellations
WHERE payment_request_id IN ('seq-U.U.S-L-2', 'u-UNKNOWN_EXCEPTION-L-5')
ORDER BY cancellation_id;
SELECT order_no, status FROM shop_orders WHERE order_no IN (2, 5) ORDER BY order_no;

-- what a person must look at, and why
SELECT payment_request_id, last_result_code, reason FROM alipayplus.attention ORDER BY cancellation_id;

-- after fixing the cause a person requeues; the budget starts afresh
SET alipayplus.max_attempts = 1;
SELECT state, needs_attention, attempt_count
FROM alipayplus_requeue_cancellation((SELECT cancellation_id FROM alipayplus.cancellations
									   WHERE payment_request_id = 'u-UNKNOWN_EXCEPTION-L-5'));
SELECT claimed, retrying, attention FROM alipayplus_process_cancellations();
SELECT attempt_count, needs_attention, attention_reason FROM alipayplus.cancellations
WHERE payment_request_id = 'u-UNKNOWN_EXCEPTION-L-5';
SELECT errcheck($$SELECT alipayplus_requeue_cancellation(-1)$$);
RESET alipayplus.max_attempts;

-- result_policy is editable, but only SUCCESS can mean done
SELECT errcheck($$UPDATE alipayplus.result_policy SET action = 'done' WHERE result_code = 'PROCESS_FAIL'$$);
SELECT errcheck($$DELETE FROM alipayplus.result_policy WHERE result_code = 'PROCESS_FAIL'$$);
INSERT INTO alipayplus.result_policy VALUES ('BRAND_NEW_CODE', 'retry', 'learned from Alipay+ support');
-- changing a built-in row stores a DBA row that takes precedence
UPDATE alipayplus.result_policy SET action = 'retry', note = 'our contract says retry'
WHERE result_code = 'ORDER_NOT_EXIST';
SELECT result_code, action, builtin FROM alipayplus.result_policy
WHERE result_code IN ('BRAND_NEW_CODE', 'ORDER_NOT_EXIST') ORDER BY 1, 3;
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'f-ORDER_NOT_EXIST-L-12');
SELECT needs_attention, next_attempt_at IS NOT NULL AS retry_queued FROM alipayplus.cancellations
WHERE payment_request_id = 'f-ORDER_NOT_EXIST-L-12';
UPDATE alipayplus.cancellations SET next_attempt_at = 'infinity'
WHERE payment_request_id = 'f-ORDER_NOT_EXIST-L-12';

-- payment results: after a cancel request they are recorded, never applied
SELECT alipayplus_apply_payment_result('L-1', 'S', 'SUCCESS') AS late_s;
SELECT status FROM shop_orders WHERE order_no = 1;
SELECT late_payment_status, late_payment_code FROM alipayplus.cancellations WHERE payment_request_id = 'L-1';
-- without a cancel request they move the order
SELECT alipayplus_apply_payment_result('L-8', 'S') AS paid,
	   alipayplus_apply_payment_result('L-9', 'F', 'USER_BALANCE_NOT_ENOUGH') AS failed,
	   alipayplus_apply_payment_result('L-11', 'U') AS unknown,
	   alipayplus_apply_payment_result('L-nope', 'S') AS no_order;
SELECT order_no, status FROM shop_orders WHERE order_no IN (8, 9, 11) ORDER BY order_no;
SELECT errcheck($$SELECT alipayplus_apply_payment_result('L-8', 'X')$$);
SELECT errcheck($$SELECT alipayplus_apply_payment_result(NULL, 'S')$$);
-- a paid order can still be cancelled within the window (regardless of status)
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'L-8');
SELECT status FROM shop_orders WHERE order_no = 8;

-- the direct call goes through the same ledger, in the caller's transaction
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'L-11');
SELECT status FROM shop_orders WHERE order_no = 11;
BEGIN;
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'L-9');
ROLLBACK;
SELECT status FROM shop_orders WHERE order_no = 9;
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations WHERE payment_request_id = 'L-9';

-- past the cancel window (known from the bound order): refused, untouched
SELECT gw_mark();
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'L-10')$$);
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'L-10')$$);
SELECT status FROM shop_orders WHERE order_no = 10;
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations WHERE payment_request_id = 'L-10';

-- refunds are never cancelled
SELECT alipayplus_note_refund('RF-1', 'RFID-1');
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'RF-1')$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_id => 'RFID-1')$$);
SELECT errcheck($$SELECT alipayplus_note_refund('L-1')$$);
SELECT count(*) AS gateway_requests FROM gw_log();

-- systemic failures are errors, so pg_cron's job_run_details shows them
SELECT errcheck($$SELECT alipayplus_process_cancellations(0)$$);
SELECT errcheck($$SELECT alipayplus_process_cancellations(10, '0 s')$$);
SET alipayplus.gateway_url = '';
SELECT errcheck($$SELECT alipayplus_process_cancellations()$$);
SET alipayplus.gateway_url = 'https://127.0.0.1:1';
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'L-unreachable');
-- an unreachable gateway is not an error of the run: every attempt is
-- recorded and each row backs off on its own (CALL alipayplus_run_cancellations()
-- reports such a run as failed; see shop.sql)
SELECT claimed, retrying, unanswered FROM alipayplus_process_cancellations();
RESET alipayplus.gateway_url;
SELECT payment_request_id, state, attempt_count, needs_attention, last_result_code,
	next_attempt_at > now() AS backed_off
FROM alipayplus.cancellations
WHERE payment_request_id IN ('L-unreachable', 'L-11') ORDER BY payment_request_id;
-- when the row is due again, the call goes through
UPDATE alipayplus.cancellations SET next_attempt_at = now()
WHERE payment_request_id IN ('L-unreachable', 'L-11') AND state = 'CANCELLING';
SELECT claimed, cancelled FROM alipayplus_process_cancellations();

-- a queue nobody processes shows up in the attention view
UPDATE alipayplus.cancellations SET next_attempt_at = now() - interval '1 hour'
WHERE payment_request_id = 'f-INVALID_SIGNATURE-L-6';
SELECT payment_request_id, left(reason, 13) AS reason FROM alipayplus.attention
WHERE payment_request_id = 'f-INVALID_SIGNATURE-L-6';

-- runs are bounded in count and in time
SELECT count(*) AS queued FROM (
	SELECT alipayplus_request_cancel(payment_request_id => 'L-bound-' || g) FROM generate_series(1, 3) g) q;
SELECT claimed FROM alipayplus_process_cancellations(max_count => 1);
SELECT stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
SELECT claimed FROM alipayplus_process_cancellations(time_budget => '1 microsecond');
SELECT stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;

-- every committed run left a summary row
SELECT count(*) > 0 AS runs_recorded, sum(claimed) = (SELECT count(*) FROM alipayplus.cancel_attempts
	WHERE caller = 'alipayplus_process_cancellations') AS attempts_add_up
FROM alipayplus.processor_runs;

-- _settle is strict and checks the types of what it is given
SELECT alipayplus._settle(NULL, ROW(1), 'x') IS NULL AS strict_null;
SELECT errcheck($$SELECT alipayplus._settle(c, r, 'test')
	FROM alipayplus.cancellations c,
		(SELECT 'paymentRequestId'::text AS sent_field, 'x'::text AS sent_id,
				'now'::text AS request_time, 200 AS http_status, 83 AS result_status) r
	LIMIT 1$$);
-- a DBA's trigger that skips the ledger's updates: the answer is still kept
CREATE FUNCTION skip_ledger_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RETURN NULL;
END $$;
CREATE TRIGGER skip_ledger_update BEFORE UPDATE ON alipayplus.cancellations
	FOR EACH ROW EXECUTE FUNCTION skip_ledger_update();
SET client_min_messages = error;
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'L-skipped-1');
RESET client_min_messages;
DROP TRIGGER skip_ledger_update ON alipayplus.cancellations;
DROP FUNCTION skip_ledger_update();
SELECT count(*) AS attempts_kept FROM alipayplus.cancel_attempts WHERE sent_id = 'L-skipped-1';
