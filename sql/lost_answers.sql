--
-- lost_answers: six ways an answer could be lost or an order stranded
-- (issue 19).  The duplicate id inserted during a call and the pg_cron
-- command of several statements are in test/lost_answers.sh and
-- test/cron.sh.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
RESET client_min_messages;
SET alipayplus.retry_base_ms = 0;
\set VERBOSITY default

-- 1. The procedures that commit refuse, before claiming or sending
-- anything, wherever they could not commit.  One cancellation is due; the
-- gateway must not hear of it until the procedure runs as a statement of
-- its own.
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'toplevel-1');
SELECT gw_mark();
-- in a transaction block
BEGIN;
CALL alipayplus_run_cancellations();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
CALL alipayplus_process_backlog(progress => NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- from a function
SELECT left(errcheck('CALL alipayplus_run_cancellations()'), 90) AS from_a_function;
SELECT left(errcheck('CALL alipayplus_process_backlog(progress => NULL)'), 90) AS from_a_function;
-- from a DO block inside BEGIN
BEGIN;
DO $$ BEGIN CALL alipayplus_run_cancellations(); END $$;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- from a wrapper procedure with SET (which cannot commit)
CREATE PROCEDURE la_wrapper() LANGUAGE plpgsql SET work_mem = '4MB'
AS $$ BEGIN CALL alipayplus_run_cancellations(); END $$;
CALL la_wrapper();
\echo :LAST_ERROR_SQLSTATE
CREATE PROCEDURE la_wrapper_backlog() LANGUAGE plpgsql SET work_mem = '4MB'
AS $$ BEGIN CALL alipayplus_process_backlog(progress => NULL); END $$;
CALL la_wrapper_backlog();
\echo :LAST_ERROR_SQLSTATE
-- in a query string of several statements (an implicit transaction block,
-- as in a pg_cron command 'CALL ...; SELECT 1')
CALL alipayplus_run_cancellations() \; SELECT 1 AS after_the_call;
\echo :LAST_ERROR_SQLSTATE
-- where the first COMMIT fails although the caller looks as if it could
-- commit: a loop over a query that is not read-only ...
CREATE TABLE la_loop (x int);
DO $$ DECLARE r record; BEGIN
	FOR r IN INSERT INTO la_loop VALUES (1) RETURNING x LOOP
		CALL alipayplus_run_cancellations();
	END LOOP; END $$;
\echo :LAST_ERROR_SQLSTATE
DO $$ DECLARE r record; BEGIN
	FOR r IN INSERT INTO la_loop VALUES (1) RETURNING x LOOP
		CALL alipayplus_process_backlog(progress => NULL);
	END LOOP; END $$;
\echo :LAST_ERROR_SQLSTATE
-- ... and a caller's deferred constraint that fails at commit
CREATE TABLE la_parent (id int PRIMARY KEY);
CREATE TABLE la_child (pid int REFERENCES la_parent DEFERRABLE INITIALLY DEFERRED);
CREATE PROCEDURE la_job() LANGUAGE plpgsql
AS $$ BEGIN INSERT INTO la_child VALUES (42); CALL alipayplus_run_cancellations(); END $$;
CALL la_job();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS rows_kept FROM la_loop, la_child;
-- nothing went out, nothing was recorded
SELECT gw_requests('toplevel-1') AS requests, c.state, c.attempt_count
FROM alipayplus.cancellations c WHERE c.sent_id = 'toplevel-1';
-- a DO block outside a transaction block can commit, and so can a plain CALL
DO $$ BEGIN CALL alipayplus_run_cancellations(); END $$;
SELECT gw_requests('toplevel-1') AS requests, c.state, c.attempt_count
FROM alipayplus.cancellations c WHERE c.sent_id = 'toplevel-1';
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'toplevel-2');
CALL alipayplus_process_backlog(progress => NULL);
SELECT gw_requests('toplevel-2') AS requests, c.state
FROM alipayplus.cancellations c WHERE c.sent_id = 'toplevel-2';

-- 6. A time_budget too long for the calls' millisecond limits is refused
-- with 22023 (not "integer out of range"), before anything is claimed.
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'budget-1');
SELECT gw_mark();
SELECT left(errcheck($$SELECT * FROM alipayplus_process_cancellations(10, '25 days')$$), 50) AS refused;
CALL alipayplus_run_cancellations(time_budget => '30 days');
\echo :LAST_ERROR_SQLSTATE
CALL alipayplus_process_backlog(time_budget => '1 year', progress => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT gw_requests('budget-1') AS requests;
-- 24 days is still accepted
SELECT claimed, cancelled FROM alipayplus_process_cancellations(10, '24 days');

-- 2. A binding is not replaced while its orders' cancellations are in
-- progress or wait for a person: their orders would stay CANCELLING.
CREATE TABLE la_orders_a (rid text PRIMARY KEY, pid text NOT NULL DEFAULT '',
	st text NOT NULL DEFAULT 'NEW');
CREATE TABLE la_orders_b (rid text PRIMARY KEY, pid text NOT NULL DEFAULT '',
	st text NOT NULL DEFAULT 'NEW');
SELECT alipayplus_bind_orders('la_orders_a', 'rid', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO la_orders_a (rid) VALUES ('rebind-1');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'rebind-1');
SELECT left(errcheck($$SELECT alipayplus_bind_orders('la_orders_b', 'rid', 'st', 'CANCELLED', 'CANCELLING')$$), 140) AS refused;
SELECT left(errcheck($$SELECT alipayplus_bind_orders('la_orders_a', 'rid', 'st', 'VOID', 'CANCELLING')$$), 60) AS refused;
-- what strands nothing is allowed: the same table, a payment id column added
SELECT alipayplus_bind_orders('la_orders_a', 'rid', 'st', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pid');
SELECT orders, payment_id_column FROM alipayplus.order_binding;
-- once the processor settled it, the order followed and binding another table works
CALL alipayplus_run_cancellations();
SELECT rid, st FROM la_orders_a;
SELECT alipayplus_bind_orders('la_orders_b', 'rid', 'st', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pid');
SELECT orders FROM alipayplus.order_binding;
-- 3. A cancellation requested by payment id before the order stored that
-- id: one ledger row, one id sent, and the verified S reaches the order.
INSERT INTO la_orders_b (rid) VALUES ('early-req-1'), ('early-req-2');
SELECT gw_mark();
-- (a) the order stores the payment id, then the cancellation is asked for
-- again by its request id: the same ledger row, now knowing both ids
SELECT cancellation_id AS early1, sent_field, sent_id, payment_request_id, state
FROM alipayplus_request_cancel(payment_id => 'early-pay-1') \gset
\echo :sent_field :sent_id :state
UPDATE la_orders_b SET pid = 'early-pay-1' WHERE rid = 'early-req-1';
SELECT cancellation_id = :early1 AS same_row, sent_field, sent_id, payment_request_id, payment_id, state
FROM alipayplus_request_cancel(payment_request_id => 'early-req-1');
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations
WHERE payment_request_id = 'early-req-1' OR payment_id = 'early-pay-1' OR sent_id IN ('early-req-1', 'early-pay-1');
SELECT rid, pid, st FROM la_orders_b WHERE rid = 'early-req-1';
-- (b) the order stores the payment id and nobody asks again
SELECT sent_field, sent_id, payment_request_id, state
FROM alipayplus_request_cancel(payment_id => 'early-pay-2');
UPDATE la_orders_b SET pid = 'early-pay-2' WHERE rid = 'early-req-2';
CALL alipayplus_run_cancellations();
-- one call each, with the payment id; both orders CANCELLED, nothing flagged
SELECT j->>'id' AS sent, count(*) FROM gw_log() GROUP BY 1 ORDER BY 1;
SELECT sent_field, sent_id, payment_request_id, state, needs_attention
FROM alipayplus.cancellations WHERE sent_id LIKE 'early-%' ORDER BY sent_id;
SELECT rid, pid, st FROM la_orders_b WHERE rid LIKE 'early-%' ORDER BY rid;
-- asked once more by the request id: the same (CANCELLED) row, no call
SELECT result_status, cancellation_id = :early1 AS same_row, state
FROM alipayplus_cancel_payment(payment_request_id => 'early-req-1');
SELECT count(*) AS requests FROM gw_log();

-- a cancellation waiting for a person blocks it too
INSERT INTO la_orders_b (rid) VALUES ('f-PROCESS_FAIL-rebind-2');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'f-PROCESS_FAIL-rebind-2');
CALL alipayplus_run_cancellations();
SELECT cancellation_id IS NOT NULL AS flagged, state FROM alipayplus.attention
WHERE sent_id = 'f-PROCESS_FAIL-rebind-2';
SELECT errcheck($$SELECT alipayplus_bind_orders('la_orders_a', 'rid', 'st', 'CANCELLED', 'CANCELLING')$$) ~ '^55000' AS refused;
-- nothing was left behind by the refusals
SELECT orders FROM alipayplus.order_binding;
SELECT rid, st FROM la_orders_a ORDER BY rid;
SELECT rid, st FROM la_orders_b ORDER BY rid;


-- 5. Two-phase commit: PREPARE TRANSACTION after a direct call or a
-- request works (the NOTIFY is queued at commit only, and a prepared
-- transaction sends none); the answer is kept by COMMIT PREPARED.
SELECT gw_mark();
BEGIN;
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'twophase-1');
PREPARE TRANSACTION 'lost_answers_1';
COMMIT PREPARED 'lost_answers_1';
BEGIN;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'twophase-2');
PREPARE TRANSACTION 'lost_answers_2';
COMMIT PREPARED 'lost_answers_2';
SELECT sent_id, state, attempt_count FROM alipayplus.cancellations
WHERE sent_id LIKE 'twophase-%' ORDER BY sent_id;
SELECT a.sent_id, a.result_status, a.caller FROM alipayplus.cancel_attempts a
WHERE a.sent_id LIKE 'twophase-%' ORDER BY a.attempt_id;
SELECT j->>'id' AS sent, count(*) FROM gw_log() GROUP BY 1 ORDER BY 1;
-- a request in a savepoint that rolls back, then a commit: fine too
BEGIN;
SAVEPOINT s;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'twophase-3');
ROLLBACK TO SAVEPOINT s;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'twophase-4');
COMMIT;
SELECT sent_id, state FROM alipayplus.cancellations
WHERE sent_id IN ('twophase-3', 'twophase-4') ORDER BY sent_id;
SELECT count(*) AS prepared_left FROM pg_prepared_xacts WHERE gid LIKE 'lost_answers_%';

DROP PROCEDURE la_wrapper();
DROP PROCEDURE la_wrapper_backlog();
