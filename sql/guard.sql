--
-- guard: alipayplus_guard_cancelled() keeps cancelled rows cancelled,
-- whoever writes, and refuses to be misused
--
CREATE TABLE g_orders (id int PRIMARY KEY, request_id text, status text, note text);
CREATE TRIGGER g_guard BEFORE UPDATE OR DELETE ON g_orders FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED', 'CANCELLING', 'CANCEL_REQUESTED');
INSERT INTO g_orders VALUES
	(1, 'g-1', 'CANCELLED', NULL), (2, 'g-2', 'CANCELLING', NULL),
	(3, 'g-3', 'PENDING', NULL), (4, 'g-4', 'CANCEL_REQUESTED', NULL);

-- a DBA's mistakes at a psql prompt
SELECT errcheck($$UPDATE g_orders SET status = 'PAID' WHERE id = 1$$);
SELECT errcheck($$UPDATE g_orders SET status = NULL WHERE id = 1$$);
SELECT errcheck($$UPDATE g_orders SET status = 'CANCELLING' WHERE id = 1$$);
SELECT errcheck($$UPDATE g_orders SET status = 'PAID' WHERE id = 2$$);
SELECT errcheck($$UPDATE g_orders SET status = 'CANCELLING' WHERE id = 4$$);
SELECT errcheck($$DELETE FROM g_orders WHERE id = 2$$);
SELECT errcheck($$DELETE FROM g_orders WHERE id = 1$$);
SELECT errcheck($$UPDATE g_orders SET status = 'PAID'$$);
SELECT errcheck($$DELETE FROM g_orders$$);
SELECT * FROM g_orders ORDER BY id;

-- what stays allowed
UPDATE g_orders SET status = 'CANCELLED' WHERE id IN (2, 4);
UPDATE g_orders SET note = 'checked' WHERE id = 1;
UPDATE g_orders SET status = 'CANCELLED' WHERE id = 1;
UPDATE g_orders SET status = 'PAID' WHERE id = 3;
DELETE FROM g_orders WHERE id = 3;
SELECT * FROM g_orders ORDER BY id;

-- a table without a primary key is named by ctid
CREATE TABLE g_nopk (status text);
CREATE TRIGGER g_guard BEFORE UPDATE OR DELETE ON g_nopk FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED');
INSERT INTO g_nopk VALUES ('CANCELLED');
SELECT errcheck($$UPDATE g_nopk SET status = 'OPEN'$$);

-- AFTER works too (it judges the row as finally written); misuse: statement
-- level, wrong event, no such column, no arguments
CREATE TABLE g_misuse (id int PRIMARY KEY, status text);
INSERT INTO g_misuse VALUES (1, 'CANCELLED');
CREATE TRIGGER g_after AFTER UPDATE ON g_misuse FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED');
SELECT errcheck($$UPDATE g_misuse SET status = 'CANCELLED'$$);
SELECT errcheck($$UPDATE g_misuse SET status = 'OPEN'$$);
DROP TRIGGER g_after ON g_misuse;
CREATE TRIGGER g_stmt BEFORE UPDATE ON g_misuse FOR EACH STATEMENT
	EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED');
SELECT errcheck($$UPDATE g_misuse SET status = 'CANCELLED'$$);
DROP TRIGGER g_stmt ON g_misuse;
CREATE TRIGGER g_ins BEFORE INSERT ON g_misuse FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED');
SELECT errcheck($$INSERT INTO g_misuse VALUES (2, 'OPEN')$$);
DROP TRIGGER g_ins ON g_misuse;
CREATE TRIGGER g_col BEFORE UPDATE ON g_misuse FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_cancelled('state', 'CANCELLED');
SELECT errcheck($$UPDATE g_misuse SET status = 'CANCELLED'$$);
DROP TRIGGER g_col ON g_misuse;
CREATE TRIGGER g_args BEFORE UPDATE ON g_misuse FOR EACH ROW
	EXECUTE FUNCTION alipayplus_guard_cancelled('status');
SELECT errcheck($$UPDATE g_misuse SET status = 'CANCELLED'$$);
DROP TRIGGER g_args ON g_misuse;
SELECT errcheck($$SELECT alipayplus_guard_cancelled()$$);

DROP TABLE g_orders, g_nopk, g_misuse;
