--
-- shop: the ledger's promises with a schema and roles like a real shop's:
-- a non-superuser table owner, an application role with EXECUTE only,
-- other triggers on the orders table, placeholders in id columns, odd
-- column types, partitions and inheritance children.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
RESET client_min_messages;
SET alipayplus.retry_base_ms = 0;

DROP ROLE IF EXISTS regress_shop_owner;
DROP ROLE IF EXISTS regress_shop_app;
CREATE ROLE regress_shop_owner LOGIN;
CREATE ROLE regress_shop_app LOGIN;
CREATE SCHEMA shop AUTHORIZATION regress_shop_owner;
GRANT USAGE ON SCHEMA shop TO regress_shop_app;
GRANT EXECUTE ON FUNCTION alipayplus_request_cancel(text, text, timestamptz),
	alipayplus_cancel_payment(text, text),
	alipayplus_process_cancellations(integer, interval, bigint) TO regress_shop_app;
GRANT EXECUTE ON PROCEDURE alipayplus_run_cancellations(integer, interval) TO regress_shop_app;

-- the owner's table, an audit trigger and a placeholder '' in payment_id
SET ROLE regress_shop_owner;
CREATE TABLE shop.orders (
	order_no int PRIMARY KEY,
	request_id text NOT NULL UNIQUE,
	payment_id text NOT NULL DEFAULT '',
	status text NOT NULL DEFAULT 'PENDING',
	note text,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE shop.audit (who name, superuser text, search_path text, order_no int, status text);
CREATE FUNCTION shop.audit_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	-- unqualified name: resolved through the session's configured search_path
	INSERT INTO audit VALUES (current_user, current_setting('is_superuser'),
		current_setting('search_path'), NEW.order_no, NEW.status);
	RETURN NEW;
END;
$$;
CREATE TRIGGER audit AFTER UPDATE ON shop.orders
	FOR EACH ROW EXECUTE FUNCTION shop.audit_trigger();
INSERT INTO shop.orders (order_no, request_id) VALUES
	(1, 'shop-A'), (2, 'shop-B'), (3, 'shop-C'), (4, 'shop-D'), (5, 'shop-E');
RESET ROLE;
ALTER ROLE regress_shop_owner SET search_path = shop, public;
ALTER DATABASE :"DBNAME" SET search_path = shop, public;

SELECT alipayplus_bind_orders('shop.orders', 'request_id', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	payment_id_column => 'payment_id', initiated_at_column => 'created_at');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass
	AND tgname LIKE 'alipayplus%' ORDER BY 1;

-- 1. a ledger row belongs to exactly one payment: B's placeholder '' payment
-- id does not lead to A's cancellation, and B's own request is sent
\c
SELECT gw_mark();
SET ROLE regress_shop_app;
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'shop-A');
SELECT result_status, state, attempt_id IS NOT NULL AS own_attempt
FROM alipayplus_cancel_payment(payment_request_id => 'shop-B');
RESET ROLE;
SELECT gw_requests('shop-A') AS requests_a, gw_requests('shop-B') AS requests_b;
SELECT sent_field, sent_id, payment_request_id, payment_id, state
FROM alipayplus.cancellations ORDER BY cancellation_id;
-- each cancellation has its own S attempt
SELECT c.sent_id, count(a.*) AS attempts
FROM alipayplus.cancellations c JOIN alipayplus.cancel_attempts a USING (cancellation_id)
WHERE a.sent_id = c.sent_id AND a.result_status = 'S' GROUP BY 1 ORDER BY 1;
-- asking by the placeholder payment id is an error, not a match
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_id => '')$$);
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_id => '   ')$$);

-- 2. the owner's trigger ran as the owner, not as the extension's superuser,
-- and saw the session's configured search_path
SELECT DISTINCT who, superuser, search_path FROM shop.audit ORDER BY 1;

-- ...so a trigger that tries to make its owner a superuser fails, and the
-- owner stays what it was
SET ROLE regress_shop_owner;
CREATE FUNCTION shop.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE 'ALTER ROLE regress_shop_owner SUPERUSER';
	RETURN NEW;
END;
$$;
CREATE TRIGGER escalate BEFORE UPDATE ON shop.orders
	FOR EACH ROW EXECUTE FUNCTION shop.escalate();
RESET ROLE;
SET ROLE regress_shop_app;
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'shop-C')$$);
RESET ROLE;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_shop_owner';
SELECT count(*) AS ledger_rows_for_c FROM alipayplus.cancellations WHERE sent_id = 'shop-C';
DROP TRIGGER escalate ON shop.orders;

-- the TRUNCATE guard reads the table as its owner too
SET ROLE regress_shop_owner;
SELECT errcheck('TRUNCATE shop.orders');
RESET ROLE;

-- the caller's search_path and temporary objects never reach the owner's
-- code: with a domain named text and a table named audit in the caller's
-- pg_temp, the ledger refuses to touch the orders table at all; without
-- them it goes ahead
INSERT INTO shop.orders (order_no, request_id) VALUES (12, 'shop-J');
SET ROLE regress_shop_app;
SET search_path = pg_temp, pg_catalog, shop, public;
CREATE TABLE pg_temp.hijacked (who name);
CREATE FUNCTION pg_temp.evil(v pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO pg_temp.hijacked VALUES (current_user);
	RETURN true;
END;
$$;
CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.evil(VALUE));
CREATE TABLE pg_temp.audit (who name, superuser pg_catalog.text, search_path pg_catalog.text,
	order_no int, status pg_catalog.text);
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'shop-J')$$);
SELECT (SELECT count(*) FROM pg_temp.hijacked) AS evil_calls,
	(SELECT count(*) FROM pg_temp.audit) AS shadow_audit_rows;
RESET search_path;
DISCARD TEMP;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-J');
RESET ROLE;
SELECT who, status FROM shop.audit WHERE order_no = 12;

-- 3. one bad row does not stop the queue or erase Alipay+'s answer: the
-- owner's trigger refuses to cancel order D
SET ROLE regress_shop_owner;
CREATE FUNCTION shop.no_cancel_d() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.order_no = 4 AND NEW.status = 'CANCELLED' THEN
		RAISE EXCEPTION 'order 4 is under review';
	END IF;
	RETURN NEW;
END;
$$;
CREATE TRIGGER no_cancel_d BEFORE UPDATE ON shop.orders
	FOR EACH ROW EXECUTE FUNCTION shop.no_cancel_d();
RESET ROLE;
SET ROLE regress_shop_app;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-C');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-D');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-E');
RESET ROLE;
SELECT gw_mark();
SET ROLE regress_shop_app;
SELECT claimed, cancelled, retrying, attention, unanswered FROM alipayplus_process_cancellations();
RESET ROLE;
SELECT o.order_no, o.status, c.state, c.needs_attention, c.attempt_count
FROM shop.orders o JOIN alipayplus.cancellations c ON c.sent_id = o.request_id
ORDER BY 1;
SELECT sent_id, reason FROM alipayplus.attention ORDER BY cancellation_id;
SELECT count(*) AS s_attempts_for_d FROM alipayplus.cancel_attempts
WHERE sent_id = 'shop-D' AND result_status = 'S';
-- the next run does not call Alipay+ for D again
SELECT claimed FROM alipayplus_process_cancellations();
SELECT gw_requests('shop-D') AS requests_d;
-- the owner fixes the cause; requeue applies the stored S without a call
DROP TRIGGER no_cancel_d ON shop.orders;
SELECT state, needs_attention FROM alipayplus_requeue_cancellation(
	(SELECT cancellation_id FROM alipayplus.cancellations WHERE sent_id = 'shop-D'));
SELECT status FROM shop.orders WHERE order_no = 4;
SELECT gw_requests('shop-D') AS requests_d;

-- an owner's trigger that silently skips the update (returns NULL) does not
-- leave the order behind the ledger unnoticed
INSERT INTO shop.orders (order_no, request_id) VALUES (13, 'shop-K');
SET ROLE regress_shop_owner;
CREATE FUNCTION shop.freeze() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF OLD.status = 'CANCELLING' AND NEW.order_no = 13 THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END;
$$;
CREATE TRIGGER freeze_k BEFORE UPDATE ON shop.orders
	FOR EACH ROW EXECUTE FUNCTION shop.freeze();
RESET ROLE;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-K');
SELECT claimed, cancelled, attention FROM alipayplus_process_cancellations();
SELECT c.state, c.needs_attention, o.status, left(a.reason, 120) AS reason
FROM alipayplus.cancellations c JOIN shop.orders o ON o.request_id = c.sent_id
LEFT JOIN alipayplus.attention a USING (cancellation_id) WHERE c.sent_id = 'shop-K';
DROP TRIGGER freeze_k ON shop.orders;

-- an order row holding an id Alipay+ cannot be sent is flagged, not fatal
INSERT INTO shop.orders (order_no, request_id, payment_id) VALUES (6, 'shop-F', 'bad' || chr(9) || 'id');
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'shop-F')$$);

-- a statement_timeout in the middle of a run (issue 16): the answer that
-- came is settled and committed, the call still in flight is recorded as
-- U local.statement_timeout (the caller's limit, never the gateway's
-- local.timeout) and backs off, the run says why it stopped, and the CALL
-- fails with PostgreSQL's own 57014.  (Before 1.3 the call gave up on its
-- own as local.timeout and the CALL returned success.)
INSERT INTO shop.orders (order_no, request_id) VALUES (10, 'shop-T1'), (11, 'slow-3000-shop-T2');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-T1');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'slow-3000-shop-T2');
SET statement_timeout = '1500ms';
CALL alipayplus_run_cancellations();
RESET statement_timeout;
SELECT c.sent_id, c.state, c.attempt_count, c.last_result_code, o.status
FROM alipayplus.cancellations c JOIN shop.orders o ON o.request_id = c.sent_id
WHERE c.sent_id LIKE '%shop-T%' ORDER BY c.cancellation_id;
SELECT stopped_because, finished_at IS NOT NULL AS finished
FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
-- the timed-out one goes through on a later run
UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE sent_id = 'slow-3000-shop-T2';
SELECT claimed, cancelled FROM alipayplus_process_cancellations();

-- 4. an outage: every attempt is kept, each row backs off on its own, and
-- the procedure reports a failed run after committing them
INSERT INTO shop.orders (order_no, request_id) VALUES (7, 'shop-G'), (8, 'shop-H');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-G');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'shop-H');
SET alipayplus.gateway_url = 'https://127.0.0.1:1';
SET alipayplus.retry_base_ms = '1h';
SELECT claimed, cancelled, retrying, unanswered FROM alipayplus_process_cancellations();
SELECT sent_id, attempt_count, unanswered_streak, last_result_code,
	next_attempt_at > now() + interval '5 minutes' AS backed_off
FROM alipayplus.cancellations WHERE sent_id IN ('shop-G', 'shop-H') ORDER BY 1;
UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE sent_id IN ('shop-G', 'shop-H');
-- (an error is expected here: ZA004, after the attempts were committed)
\set VERBOSITY terse
CALL alipayplus_run_cancellations();
\set VERBOSITY default
SELECT sent_id, attempt_count FROM alipayplus.cancellations
WHERE sent_id IN ('shop-G', 'shop-H') ORDER BY 1;
SELECT claimed, unanswered, stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
-- a third unanswered attempt makes it visible in the attention view
UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE sent_id IN ('shop-G', 'shop-H');
SELECT unanswered FROM alipayplus_process_cancellations();
SELECT sent_id, left(reason, 50) AS reason FROM alipayplus.attention
WHERE sent_id IN ('shop-G', 'shop-H') ORDER BY 1;
RESET alipayplus.gateway_url;
RESET alipayplus.retry_base_ms;
-- the retry delay cannot overflow however many attempts
SELECT alipayplus._retry_delay(2147483647, true) <= interval '15 minutes' AS capped;

-- 5. ways round the guard
-- a plain UPDATE cannot make an order cancelled or cancelling
SELECT errcheck($$UPDATE shop.orders SET status = 'CANCELLED' WHERE order_no = 7$$);
SELECT errcheck($$UPDATE shop.orders SET status = 'CANCELLING' WHERE order_no = 6$$);
SELECT errcheck($$INSERT INTO shop.orders (order_no, request_id, status) VALUES (9, 'shop-I', 'CANCELLED')$$);
-- not even once a cancellation is in progress: only a verified S
SELECT errcheck($$UPDATE shop.orders SET status = 'CANCELLED' WHERE order_no = 7$$);
-- the ids of a cancelling or cancelled order are fixed
SELECT errcheck($$UPDATE shop.orders SET request_id = 'shop-A2' WHERE order_no = 1$$);
SELECT errcheck($$UPDATE shop.orders SET payment_id = 'P-1' WHERE order_no = 7$$);
-- another BEFORE trigger that runs after the guard's turn cannot rewrite a cancelled row
SET ROLE regress_shop_owner;
CREATE FUNCTION shop.zz_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.note = 'paid after all' THEN
		NEW.status := 'PAID';
	END IF;
	RETURN NEW;
END;
$$;
CREATE TRIGGER zz_rewrite BEFORE UPDATE ON shop.orders
	FOR EACH ROW EXECUTE FUNCTION shop.zz_rewrite();
RESET ROLE;
SELECT errcheck($$UPDATE shop.orders SET note = 'paid after all' WHERE order_no = 1$$);
SELECT status FROM shop.orders WHERE order_no = 1;

-- binding: values must fit the column, ids must be unique, times need a zone
CREATE TABLE short_orders (req text PRIMARY KEY, st varchar(5));
SELECT errcheck($$SELECT alipayplus_bind_orders('short_orders', 'req', 'st', 'CANCELLED', 'CANCELLING')$$);
CREATE TABLE dup_orders (req text, st text);
SELECT errcheck($$SELECT alipayplus_bind_orders('dup_orders', 'req', 'st', 'CANCELLED', 'CANCELLING')$$);
CREATE TABLE local_orders (req text PRIMARY KEY, st text, at timestamp);
SELECT errcheck($$SELECT alipayplus_bind_orders('local_orders', 'req', 'st', 'CANCELLED', 'CANCELLING', initiated_at_column => 'at')$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('local_orders', 'req', 'st', 'CANCELLED', 'CANCELLING', initiated_at_column => 'at', initiated_at_time_zone => 'Nowhere/Atlantis')$$);
CREATE TABLE int_orders (req text PRIMARY KEY, st text, at int);
SELECT errcheck($$SELECT alipayplus_bind_orders('int_orders', 'req', 'st', 'CANCELLED', 'CANCELLING', initiated_at_column => 'at')$$);

-- a timestamp column read in its declared zone: the window does not move
-- with the caller's TimeZone
-- shop.orders keeps three orders cancelling (flagged above): a new binding
-- would strand them and is refused (sql/lost_answers.sql); the rest of this
-- suite moves the binding on purpose, so a superuser deletes it first
DELETE FROM alipayplus.order_binding;
SELECT alipayplus_bind_orders('local_orders', 'req', 'st', 'CANCELLED', 'CANCELLING',
	initiated_at_column => 'at', initiated_at_time_zone => 'UTC');
INSERT INTO local_orders VALUES ('loc-1', 'PENDING', '2025-01-15 16:14:59');
SET TimeZone = 'Pacific/Kiritimati';
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'loc-1')$$);
SET TimeZone = 'Pacific/Pago_Pago';
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'loc-1')$$);
RESET TimeZone;
INSERT INTO local_orders VALUES ('loc-2', 'PENDING', now() AT TIME ZONE 'UTC');
SELECT state, deadline = alipayplus_cancel_deadline(
	(SELECT at FROM local_orders WHERE req = 'loc-2') AT TIME ZONE 'UTC') AS deadline_ok
FROM alipayplus_request_cancel(payment_request_id => 'loc-2');

-- a char(n) status column: padded values are recognised
CREATE TABLE char_orders (req text PRIMARY KEY, st char(12) NOT NULL DEFAULT 'PENDING');
-- local_orders keeps loc-2 cancelling: moved on purpose, as above
DELETE FROM alipayplus.order_binding;
SELECT alipayplus_bind_orders('char_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO char_orders (req) VALUES ('chr-1');
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'chr-1');
SELECT st, length(st::text) FROM char_orders;
SELECT errcheck($$UPDATE char_orders SET st = 'PAID'$$);
SELECT errcheck($$DELETE FROM char_orders$$);

-- a partitioned table: every partition guarded, also one made after binding
CREATE TABLE part_orders (req text, st text NOT NULL DEFAULT 'PENDING', region int NOT NULL)
	PARTITION BY LIST (region);
CREATE TABLE part_orders_1 PARTITION OF part_orders FOR VALUES IN (1);
SELECT alipayplus_bind_orders('part_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
CREATE TABLE part_orders_2 PARTITION OF part_orders FOR VALUES IN (2);
CREATE TABLE part_orders_3 (LIKE part_orders);
ALTER TABLE part_orders ATTACH PARTITION part_orders_3 FOR VALUES IN (3);
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
WHERE tgrelid::regclass::text LIKE 'part_orders%' AND tgname LIKE 'alipayplus%'
ORDER BY 1, 2;
INSERT INTO part_orders VALUES ('prt-1', 'PENDING', 1), ('prt-2', 'PENDING', 2), ('prt-3', 'PENDING', 3);
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'prt-2');
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'prt-3');
SELECT errcheck($$UPDATE part_orders_2 SET st = 'PAID'$$);
SELECT errcheck($$UPDATE part_orders SET st = 'PAID' WHERE req = 'prt-3'$$);
SELECT errcheck($$TRUNCATE part_orders_2$$);
SELECT errcheck($$TRUNCATE part_orders$$);
SELECT errcheck($$TRUNCATE part_orders_1$$);
-- duplicate ids across partitions are refused at run time, nothing is marked
INSERT INTO part_orders VALUES ('prt-dup', 'PENDING', 1), ('prt-dup', 'PENDING', 2);
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'prt-dup')$$);
SELECT count(*) FROM alipayplus.cancellations WHERE sent_id = 'prt-dup';

-- an inheritance child gets its own guards
CREATE TABLE inh_orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
SELECT alipayplus_bind_orders('inh_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
CREATE TABLE inh_orders_old () INHERITS (inh_orders);
INSERT INTO inh_orders_old (req) VALUES ('inh-1');
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'inh-1');
SELECT errcheck($$UPDATE inh_orders_old SET st = 'PAID'$$);
SELECT errcheck($$TRUNCATE inh_orders_old$$);

-- an enum status column
CREATE TYPE order_state AS ENUM ('PENDING', 'PAID', 'CANCELLING', 'CANCELLED');
CREATE TABLE enum_orders2 (req text PRIMARY KEY, st order_state NOT NULL DEFAULT 'PENDING');
SELECT alipayplus_bind_orders('enum_orders2', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO enum_orders2 (req) VALUES ('enm-1');
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'enm-1');
SELECT errcheck($$UPDATE enum_orders2 SET st = 'PAID'$$);


-- columns whose equality is looser than the stored bytes are refused
CREATE EXTENSION IF NOT EXISTS citext SCHEMA public;
CREATE TABLE ci_orders (req text PRIMARY KEY, st public.citext);
SELECT errcheck($$SELECT alipayplus_bind_orders('ci_orders', 'req', 'st', 'CANCELLED', 'CANCELLING')$$);
CREATE COLLATION case_blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE coll_orders (req text COLLATE case_blind PRIMARY KEY, st text);
SELECT errcheck($$SELECT alipayplus_bind_orders('coll_orders', 'req', 'st', 'CANCELLED', 'CANCELLING')$$);

-- a char(n) request id column: the padded id is the same payment
CREATE TABLE charid_orders (req char(12) PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
SELECT alipayplus_bind_orders('charid_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO charid_orders (req) VALUES ('chid-1');
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'chid-1');
SELECT req, st FROM charid_orders;

-- rows already cancelling without a cancellation cannot join the bound tree
CREATE TABLE part_orders_4 (LIKE part_orders);
INSERT INTO part_orders_4 VALUES ('prt-4', 'CANCELLING', 4);
SELECT alipayplus_bind_orders('part_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
SELECT errcheck($$ALTER TABLE part_orders ATTACH PARTITION part_orders_4 FOR VALUES IN (4)$$);
-- nor can a table holding such rows be bound; cancelled ones are kept with a warning
CREATE TABLE stuck_orders (req text PRIMARY KEY, st text);
INSERT INTO stuck_orders VALUES ('stk-1', 'CANCELLING'), ('stk-2', 'CANCELLED');
SELECT errcheck($$SELECT alipayplus_bind_orders('stuck_orders', 'req', 'st', 'CANCELLED', 'CANCELLING')$$);
UPDATE stuck_orders SET st = 'PENDING' WHERE req = 'stk-1';
SELECT alipayplus_bind_orders('stuck_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
SELECT errcheck($$UPDATE stuck_orders SET st = 'PAID' WHERE req = 'stk-2'$$);

-- the bound guard cannot be borrowed to read the ledger from another table
SET ROLE regress_shop_app;
CREATE TEMP TABLE spy (req text, st text);
CREATE TRIGGER g AFTER INSERT OR UPDATE OR DELETE ON spy FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_order('st', 'CANCELLED', 'CANCELLING', 'req', '');
INSERT INTO spy VALUES ('shop-A', 'PENDING');
SELECT errcheck($$UPDATE spy SET st = 'CANCELLED'$$);
-- and another session's temporary tables are left alone by the event trigger
CREATE TEMP TABLE tp (x int);
CREATE TEMP TABLE tc () INHERITS (tp);
CREATE FUNCTION pg_temp.tf() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
CREATE TRIGGER alipayplus_guard_order AFTER INSERT ON tc FOR EACH ROW EXECUTE FUNCTION pg_temp.tf();
RESET ROLE;
CREATE TABLE innocent (x int);
SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'tc'::regclass;
DROP TABLE innocent;

-- (a fresh session: the temporary tables above would stop the ledger)
\c
-- binding checks the values as the table's owner: a domain's CHECK is the
-- owner's code and must not run as the superuser who binds
SET ROLE regress_shop_owner;
CREATE FUNCTION shop.status_ok(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		EXECUTE 'ALTER ROLE regress_shop_owner SUPERUSER';
	END IF;
	RETURN true;
END;
$$;
CREATE DOMAIN shop.order_status AS text CHECK (shop.status_ok(VALUE));
CREATE TABLE shop.dom_orders (req text PRIMARY KEY, st shop.order_status NOT NULL DEFAULT 'PENDING',
	pay text);
INSERT INTO shop.dom_orders (req, pay) VALUES ('dom-1', 'P-DOM-1'), ('dom-2', 'P-DOM-2'), ('dom-3', NULL);
RESET ROLE;
SELECT alipayplus_bind_orders('shop.dom_orders', 'req', 'st', 'CANCELLED', 'CANCELLING',
	payment_id_column => 'pay');
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_shop_owner';

-- an order cannot borrow another payment's verified S: not by changing its
-- ids in the same statement, not by changing them first; and an order whose
-- cancellation is CANCELLED cannot be moved back to CANCELLING
SELECT result_status, state FROM alipayplus_cancel_payment(payment_request_id => 'dom-1');
-- (the table is written as its owner: a superuser's INSERT would run the
-- domain's CHECK as superuser, as PostgreSQL always does)
SET ROLE regress_shop_owner;
SELECT errcheck($$UPDATE shop.dom_orders SET req = 'dom-1x', st = 'CANCELLED' WHERE req = 'dom-2'$$);
RESET ROLE;
-- a payment cancelled by its payment id alone (no order has that id yet)
SELECT result_status, state FROM alipayplus_cancel_payment(payment_id => 'P-LONE');
SET ROLE regress_shop_owner;
-- an order made to carry that payment id, its request id blanked, then set CANCELLED
UPDATE shop.dom_orders SET req = ' ', pay = 'P-LONE' WHERE req = 'dom-3';
SELECT errcheck($$UPDATE shop.dom_orders SET st = 'CANCELLED' WHERE req = ' '$$);
UPDATE shop.dom_orders SET req = 'dom-3', pay = NULL WHERE req = ' ';
INSERT INTO shop.dom_orders (req) VALUES ('dom-4');
RESET ROLE;
SELECT result_status FROM alipayplus_cancel_payment(payment_request_id => 'dom-4');
SET ROLE regress_shop_owner;
SELECT errcheck($$UPDATE shop.dom_orders SET req = 'dom-4b' WHERE req = 'dom-4'$$);
SELECT errcheck($$UPDATE shop.dom_orders SET st = 'CANCELLING' WHERE req = 'dom-4'$$);
RESET ROLE;
SELECT req, st FROM shop.dom_orders ORDER BY req;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_shop_owner';

-- a statement_timeout while an answer is applied: the answer is kept, the
-- order left for the next run to update (no person asked); the CALL
-- settles what arrived, records the call still in flight (if any) as
-- local.statement_timeout, commits, then fails with PostgreSQL's own 57014
-- (issue 16: it no longer returns success)
SET ROLE regress_shop_owner;
CREATE FUNCTION shop.slow_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.st = 'CANCELLED' THEN
		PERFORM pg_sleep(3);
	END IF;
	RETURN NEW;
END;
$$;
CREATE TRIGGER slow_cancel BEFORE UPDATE ON shop.dom_orders
	FOR EACH ROW EXECUTE FUNCTION shop.slow_cancel();
INSERT INTO shop.dom_orders (req) VALUES ('dom-5'), ('dom-6');
RESET ROLE;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'dom-5');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'dom-6');
SET statement_timeout = '1s';
-- (the WARNING names attempt ids, which depend on which answer came first)
SET client_min_messages = error;
CALL alipayplus_run_cancellations();
RESET client_min_messages;
RESET statement_timeout;
SELECT stopped_because, finished_at IS NOT NULL AS finished
FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
-- the answer being applied when the timeout came: kept, CANCELLED in the
-- ledger, its order to follow at the next run; the other one was settled
-- without waiting on the slow trigger (the same) or was still in flight
-- (U, retried)
SELECT count(*) FILTER (WHERE c.state = 'CANCELLED' AND NOT c.needs_attention
		AND c.order_follow_at IS NOT NULL AND o.st = 'CANCELLING') >= 1
		AS one_cut_by_the_timeout,
	bool_and((c.state = 'CANCELLED' AND NOT c.needs_attention
			  AND c.order_follow_at IS NOT NULL AND o.st = 'CANCELLING')
		OR (c.state = 'CANCELLING' AND NOT c.needs_attention
			AND c.last_result_code = 'local.statement_timeout')) AS each_as_designed,
	sum(c.attempt_count) AS attempts
FROM alipayplus.cancellations c JOIN shop.dom_orders o ON o.req = c.sent_id
WHERE c.sent_id IN ('dom-5', 'dom-6');
SELECT count(*) AS attempts_completed FROM alipayplus.cancel_attempts
WHERE sent_id IN ('dom-5', 'dom-6') AND completed_at IS NOT NULL;
DROP TRIGGER slow_cancel ON shop.dom_orders;
-- both finish at the next run: the orders to follow are updated, the
-- others due again and called
UPDATE alipayplus.cancellations SET next_attempt_at = now()
WHERE sent_id IN ('dom-5', 'dom-6') AND state = 'CANCELLING';
CALL alipayplus_run_cancellations();
SELECT c.sent_id, c.state, c.needs_attention, o.st FROM alipayplus.cancellations c
JOIN shop.dom_orders o ON o.req = c.sent_id WHERE c.sent_id IN ('dom-5', 'dom-6')
ORDER BY c.sent_id;

-- a partition that leaves the tree is checked again when it comes back
SELECT alipayplus_bind_orders('part_orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
ALTER TABLE part_orders DETACH PARTITION part_orders_1;
INSERT INTO part_orders_1 VALUES ('prt-back', 'CANCELLING', 1);
SELECT errcheck($$ALTER TABLE part_orders ATTACH PARTITION part_orders_1 FOR VALUES IN (1)$$);
DELETE FROM part_orders_1 WHERE req = 'prt-back';
ALTER TABLE part_orders ATTACH PARTITION part_orders_1 FOR VALUES IN (1);
-- check_function_bodies = off by a non-superuser does not switch the guards off
ALTER TABLE part_orders OWNER TO regress_shop_owner;
\c - regress_shop_owner
SET check_function_bodies = off;
CREATE TABLE part_orders_5 PARTITION OF part_orders FOR VALUES IN (5);
\c - postgres
SELECT tgname FROM pg_trigger WHERE tgrelid = 'part_orders_5'::regclass AND tgname LIKE 'alipayplus%' ORDER BY 1;

-- the TRUNCATE guard cannot be borrowed to read another table
CREATE TABLE other_table (secret text);
INSERT INTO other_table VALUES ('s3cret');
CREATE TRIGGER borrowed BEFORE TRUNCATE ON other_table
	FOR EACH STATEMENT EXECUTE FUNCTION alipayplus_guard_truncate('secret', 's3cret');
SELECT errcheck($$TRUNCATE other_table$$);
DROP TABLE other_table;

ALTER DATABASE :"DBNAME" RESET search_path;
ALTER ROLE regress_shop_owner RESET search_path;
\c
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
DROP SCHEMA shop CASCADE;
CREATE EXTENSION alipayplus_cancel;
RESET client_min_messages;
DROP ROLE regress_shop_owner;
DROP OWNED BY regress_shop_app;
DROP ROLE regress_shop_app;
