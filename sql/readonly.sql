--
-- readonly: every function that sends a cancelPayment request, or queues
-- one, refuses in a read-only transaction (BEGIN READ ONLY,
-- default_transaction_read_only, a hot standby) before it does anything
-- else: SQLSTATE 25006, a message that says so, nothing sent to the
-- gateway, nothing changed.  (On a standby the hint says to run on the
-- primary: test/tap/t/010_standby_readonly.pl.)
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
RESET client_min_messages;
CREATE EXTENSION alipayplus_cancel;
CREATE TABLE ro_orders (id int PRIMARY KEY, req text UNIQUE NOT NULL, status text NOT NULL DEFAULT 'NEW');
SELECT alipayplus_bind_orders('ro_orders', 'req', 'status', 'CANCELLED', 'CANCELLING');
INSERT INTO ro_orders VALUES (1, 'ro-done'), (2, 'ro-queued'), (3, 'ro-new');
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'ro-done');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'ro-queued');
-- due now
UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE sent_id = 'ro-queued';
SELECT gw_mark();

BEGIN READ ONLY;
-- a new payment, a payment already cancelled, one queued
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'ro-new')$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'ro-done')$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'ro-queued')$$);
-- before the id is even looked at
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment()$$);
SELECT errcheck($$SELECT * FROM alipayplus_request_cancel(payment_request_id => 'ro-new')$$);
-- refused as a whole, not reported id by id
SELECT errcheck($$SELECT * FROM alipayplus_request_cancel_all(ARRAY['ro-new', 'ro-other'])$$);
SELECT errcheck($$SELECT * FROM alipayplus_process_cancellations()$$);
-- the calls themselves, under the ledger
SELECT errcheck($$SELECT * FROM alipayplus._call_cancel(NULL, 'ro-direct')$$);
SELECT errcheck($$SELECT * FROM alipayplus._call_cancel_many(ARRAY['paymentRequestId'], ARRAY['ro-direct'])$$);
-- an inquiry would be recorded: refused too, in its own words
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => 'ro-new')$$);
SELECT errcheck($$SELECT * FROM alipayplus._call_inquiry(NULL, 'ro-direct')$$);
COMMIT;

-- a session whose transactions are read-only by default, and the procedures
SET default_transaction_read_only = on;
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'ro-new')$$);
SELECT errcheck($$SELECT * FROM alipayplus_process_cancellations(5, '10 s')$$);
\set SHOW_CONTEXT never
CALL alipayplus_run_cancellations();
CALL alipayplus_process_backlog(progress => '1 hour');
\set SHOW_CONTEXT errors
RESET default_transaction_read_only;

-- nothing was sent, nothing changed
SELECT count(*) AS requests_sent FROM gw_log();
SELECT id, req, status FROM ro_orders ORDER BY id;
SELECT sent_id, state, attempt_count FROM alipayplus.cancellations ORDER BY sent_id;
SELECT count(*) AS attempts, count(*) FILTER (WHERE sent_id = 'ro-direct') AS direct FROM alipayplus.cancel_attempts;
SELECT count(*) AS processor_runs FROM alipayplus.processor_runs;
SELECT count(*) AS inquiries FROM alipayplus.inquiries;

-- read-write again: the same calls go through
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'ro-new');
SELECT id, req, status FROM ro_orders ORDER BY id;
SELECT gw_requests('ro-queued') AS queued_sent, gw_requests('ro-new') AS new_sent;
