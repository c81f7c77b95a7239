--
-- pgtemp: the table owner's code touching pg_temp, from a session with and
-- without temporary tables of its own (issue 18.6 review): the session
-- neither crashes nor loses its temporary table; it gets the 55000 refusal
-- while it has one, and works when it has none.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
DROP ROLE IF EXISTS regress_pgtemp_owner;
DROP ROLE IF EXISTS regress_pgtemp_app;
RESET client_min_messages;
CREATE ROLE regress_pgtemp_owner LOGIN;
CREATE ROLE regress_pgtemp_app LOGIN;
CREATE SCHEMA pgt AUTHORIZATION regress_pgtemp_owner;
GRANT USAGE ON SCHEMA pgt TO regress_pgtemp_app;
GRANT EXECUTE ON FUNCTION alipayplus_request_cancel(text, text, timestamptz) TO regress_pgtemp_app;
-- each call's outcome, kept in an ordinary table (not the session's pg_temp)
CREATE TABLE public.pgtemp_outcomes (request_id text, outcome text);
GRANT INSERT, SELECT ON public.pgtemp_outcomes TO regress_pgtemp_app;
CREATE FUNCTION public.pgtemp_try(id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	o text;
BEGIN
	BEGIN
		SELECT state INTO o FROM public.alipayplus_request_cancel(payment_request_id => id);
	EXCEPTION WHEN others THEN
		o := SQLSTATE || ': ' || SQLERRM;
	END;
	INSERT INTO public.pgtemp_outcomes VALUES (id, o);
END;
$$;

-- the owner's trigger makes a helper function in pg_temp on every update
SET ROLE regress_pgtemp_owner;
CREATE TABLE pgt.orders (order_no int PRIMARY KEY, request_id text NOT NULL UNIQUE,
	status text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION pgt.trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	CREATE OR REPLACE FUNCTION pg_temp.helper() RETURNS int LANGUAGE sql AS 'SELECT 1';
	RETURN NEW;
END;
$$;
CREATE TRIGGER t AFTER UPDATE ON pgt.orders FOR EACH ROW EXECUTE FUNCTION pgt.trg();
INSERT INTO pgt.orders (order_no, request_id) SELECT g, 'pt-' || g FROM generate_series(1, 70) g;
RESET ROLE;
SELECT alipayplus_bind_orders('pgt.orders', 'request_id', 'status', cancelled_value => 'CANCELLED',
	cancelling_value => 'CANCELLING', pending_values => ARRAY['PENDING']);

-- 1. a session with a temporary table of its own: 30 calls, each its own
-- transaction (their empty results go to /dev/null, their outcomes to
-- pgtemp_outcomes); every one refused, the table and its row still there
\c -
SET ROLE regress_pgtemp_app;
CREATE TEMP TABLE mydata (v text);
INSERT INTO mydata VALUES ('precious');
SELECT pg_backend_pid() AS pid, pg_my_temp_schema() AS ns \gset s1_
\o /dev/null
SELECT format('SELECT public.pgtemp_try(%L)', 'pt-' || g) FROM generate_series(1, 30) g \gexec
\o
SELECT outcome, count(*) FROM public.pgtemp_outcomes GROUP BY outcome;
SELECT v, pg_backend_pid() = :s1_pid AS same_backend, pg_my_temp_schema() = :s1_ns AS same_temp_schema,
	(SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'mydata'
	 AND relnamespace = pg_catalog.pg_my_temp_schema()) AS mydata_in_catalog
FROM mydata;
-- a new temporary table still works, and the old one is still there
CREATE TEMP TABLE again (x int);
SELECT count(*) AS rows_kept FROM mydata;
RESET ROLE;
SELECT count(*) AS untouched FROM pgt.orders WHERE status = 'PENDING';
DELETE FROM public.pgtemp_outcomes;

-- 2. the reviewer's case: a session without temporary tables, 30 calls; the
-- owner's helper function in pg_temp does not stop it, nothing crashes
\c -
SET ROLE regress_pgtemp_app;
\o /dev/null
SELECT format('SELECT public.pgtemp_try(%L)', 'pt-' || g) FROM generate_series(31, 60) g \gexec
\o
SELECT outcome, count(*) FROM public.pgtemp_outcomes GROUP BY outcome;
SELECT 1 AS still_alive;
-- with a temporary table of its own now, the next one is refused and the
-- table stays
CREATE TEMP TABLE mine (v text);
INSERT INTO mine VALUES ('kept');
\set SHOW_CONTEXT never
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'pt-61');
SELECT v FROM mine;
DISCARD TEMP;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'pt-61');
RESET ROLE;
SELECT status, count(*) FROM pgt.orders GROUP BY status ORDER BY status;

\c -
DROP FUNCTION public.pgtemp_try(text);
DROP TABLE public.pgtemp_outcomes;
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
DROP SCHEMA pgt CASCADE;
DROP ROLE regress_pgtemp_owner;
DROP ROLE regress_pgtemp_app;
RESET client_min_messages;
CREATE EXTENSION alipayplus_cancel;
