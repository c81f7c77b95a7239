--
-- two_ids: a ledger row found by one of a payment's ids never contradicts
-- the other (issue 19 review).  Orders often hold a placeholder payment id
-- ('N/A', '0') until Alipay+ answers: a payment id alone is no proof.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
RESET client_min_messages;
SET alipayplus.retry_base_ms = 0;
\set VERBOSITY default

CREATE TABLE ti_orders (rid text PRIMARY KEY, pid text NOT NULL DEFAULT 'N/A',
	st text NOT NULL DEFAULT 'NEW');
SELECT alipayplus_bind_orders('ti_orders', 'rid', 'st', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pid');
INSERT INTO ti_orders (rid) VALUES ('ti-A'), ('ti-B'), ('ti-C');
SELECT gw_mark();

-- 1. Three orders with the same placeholder are three payments.
SELECT sent_field, sent_id, state FROM alipayplus_request_cancel(payment_request_id => 'ti-A');
CALL alipayplus_run_cancellations();
-- ti-B gets a ledger row of its own, CANCELLING (not ti-A's CANCELLED row)
SELECT sent_field, sent_id, payment_request_id, payment_id, state
FROM alipayplus_request_cancel(payment_request_id => 'ti-B');
SELECT rid, st FROM ti_orders ORDER BY rid;
-- a direct call for ti-C is sent with ti-C and answers for ti-C
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'ti-C');
SELECT j->>'id' AS sent, count(*) FROM gw_log() GROUP BY 1 ORDER BY 1;
CALL alipayplus_run_cancellations();
SELECT rid, st FROM ti_orders ORDER BY rid;
SELECT sent_id, payment_request_id, payment_id, state FROM alipayplus.cancellations
ORDER BY cancellation_id;
-- the guard does not take ti-A's CANCELLED row for another order's either
INSERT INTO ti_orders (rid) VALUES ('ti-D');
SELECT left(errcheck($$UPDATE ti_orders SET st = 'CANCELLED' WHERE rid = 'ti-D'$$), 5) AS guard;

-- 2. A cancellation requested by payment id learns its request id only
-- from the one order that holds that payment id.
INSERT INTO ti_orders (rid, pid) VALUES ('ti-V', 'N/A');
SELECT sent_field, sent_id, payment_request_id, state
FROM alipayplus_request_cancel(payment_id => 'u-UNKNOWN_EXCEPTION-PV');
INSERT INTO ti_orders (rid, pid) VALUES ('ti-X', 'u-UNKNOWN_EXCEPTION-PV'),
	('ti-Y', 'u-UNKNOWN_EXCEPTION-PV');
SELECT left(errcheck($$SELECT * FROM alipayplus_request_cancel(payment_request_id => 'ti-X')$$), 130) AS refused;
SELECT payment_request_id FROM alipayplus.cancellations WHERE sent_id = 'u-UNKNOWN_EXCEPTION-PV';
SELECT rid, st FROM ti_orders WHERE rid IN ('ti-X', 'ti-Y') ORDER BY rid;
-- with one holder left, that order is the payment's
DELETE FROM ti_orders WHERE rid = 'ti-Y';
SELECT sent_id, payment_request_id, state
FROM alipayplus_request_cancel(payment_request_id => 'ti-X');
-- an order that names the same payment id later is another payment: its
-- own ledger row, sent with its own request id, so it cannot be stranded
UPDATE ti_orders SET pid = 'u-UNKNOWN_EXCEPTION-PV' WHERE rid = 'ti-V';
SELECT sent_field, sent_id, payment_request_id, state
FROM alipayplus_request_cancel(payment_request_id => 'ti-V');
CALL alipayplus_run_cancellations();
SELECT rid, st FROM ti_orders WHERE rid IN ('ti-V', 'ti-X') ORDER BY rid;

-- 3. Two ids that contradict a ledger row are refused, nothing changed:
-- ti-K was cancelled as payment P-K1; a newly bound table says P-K2.
CREATE TABLE ti_orders2 (rid text PRIMARY KEY, pid text, st text NOT NULL DEFAULT 'NEW');
INSERT INTO ti_orders (rid, pid) VALUES ('ti-K', 'P-K1');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'ti-K');
CALL alipayplus_run_cancellations();
DELETE FROM alipayplus.order_binding;
SELECT alipayplus_bind_orders('ti_orders2', 'rid', 'st', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pid');
INSERT INTO ti_orders2 VALUES ('ti-K', 'P-K2');
SELECT left(errcheck($$SELECT * FROM alipayplus_request_cancel(payment_request_id => 'ti-K')$$), 90) AS refused;
SELECT rid, st FROM ti_orders2;

-- 4. With no order to say which, a payment id that a row of a request id
-- holds is ambiguous: the same payment or another with the placeholder.
DELETE FROM alipayplus.order_binding;
SELECT gw_mark();
SELECT left(errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_id => 'N/A')$$), 90) AS refused;
SELECT left(errcheck($$SELECT * FROM alipayplus_request_cancel(payment_id => 'N/A')$$), 90) AS refused;
SELECT count(*) AS requests FROM gw_log();
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations WHERE sent_id = 'N/A';

-- 5. An order at the cancelling value that no cancellation in progress
-- will reach is listed in alipayplus.attention, whatever stranded it, until
-- it is settled: here the owner's trigger refused the verified S, and a
-- person closed the flag without fixing the order.
CREATE TABLE ti_orders3 (rid text PRIMARY KEY, pid text, st text NOT NULL DEFAULT 'NEW');
SELECT alipayplus_bind_orders('ti_orders3', 'rid', 'st', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pid');
INSERT INTO ti_orders3 VALUES ('ti-S', 'P-S'), ('ti-W', NULL);
CREATE FUNCTION ti_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.st = 'CANCELLED' AND current_setting('ti.refuse', true) = 'on' THEN
		RAISE EXCEPTION 'orders are frozen today';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER ti_refuse BEFORE UPDATE ON ti_orders3 FOR EACH ROW EXECUTE FUNCTION ti_refuse();
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'ti-S');
SET ti.refuse = on;
CALL alipayplus_run_cancellations();
RESET ti.refuse;
-- closing that item is refused (the remedy is a requeue); a superuser
-- clearing the flag by hand is what can still strand the order
SELECT left(errcheck($$SELECT alipayplus_close_attention(cancellation_id, 'looked at it') FROM alipayplus.cancellations WHERE sent_id = 'ti-S'$$), 40) AS close_refused;
UPDATE alipayplus.cancellations SET needs_attention = false, attention_reason = NULL
WHERE sent_id = 'ti-S';
-- a cancellation in progress (ti-W) is not listed; ti-S is
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'ti-W');
SELECT cancellation_id IS NOT NULL AS has_row, sent_id, payment_request_id, payment_id, state,
	regexp_replace(reason, 'row [0-9]+', 'row N') AS reason
FROM alipayplus.attention WHERE payment_request_id IN ('ti-S', 'ti-W');
-- requesting again settles it: its ledger row is CANCELLED
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'ti-S');
SELECT rid, st FROM ti_orders3 ORDER BY rid;
SELECT count(*) AS listed FROM alipayplus.attention WHERE payment_request_id IN ('ti-S', 'ti-W');
-- the function behind it answers only a role that may read the view
CREATE ROLE ti_nobody;
GRANT USAGE ON SCHEMA alipayplus TO ti_nobody;
SET ROLE ti_nobody;
SELECT left(errcheck('SELECT * FROM alipayplus._stranded_orders()'), 60) AS refused;
RESET ROLE;
REVOKE USAGE ON SCHEMA alipayplus FROM ti_nobody;
DROP ROLE ti_nobody;
