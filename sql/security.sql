--
-- security: nothing that holds data or signs is PUBLIC; SECURITY DEFINER
-- functions pin search_path; a hostile search_path changes nothing
--
SELECT p.oid::regprocedure AS definer_without_pinned_search_path
FROM pg_proc p
JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
	AND d.refclassid = 'pg_extension'::regclass
	AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'alipayplus_cancel')
WHERE p.prosecdef AND NOT coalesce(p.proconfig @> '{"search_path=pg_catalog, pg_temp"}', false);

SELECT p.oid::regprocedure AS executable_by_public
FROM pg_proc p
JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
	AND d.refclassid = 'pg_extension'::regclass
	AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'alipayplus_cancel')
WHERE has_function_privilege('public', p.oid, 'EXECUTE')
ORDER BY p.oid::regprocedure::text;

CREATE ROLE apc_nobody;
CREATE ROLE apc_app;
GRANT EXECUTE ON FUNCTION alipayplus_request_cancel(text, text, timestamptz) TO apc_app;
SET ROLE apc_nobody;
SELECT errcheck($$SELECT alipayplus_signature('/p', 'c', 't', 'b')$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'sec-1')$$);
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'sec-1')$$);
SELECT errcheck($$SELECT alipayplus_process_cancellations()$$);
SELECT errcheck($$SELECT count(*) FROM alipayplus.cancel_attempts$$);
SELECT errcheck($$SELECT count(*) FROM alipayplus.cancellations$$);
SELECT errcheck($$SELECT alipayplus._call_cancel(NULL, 'sec-1')$$);
-- harmless helpers stay public
SELECT alipayplus_cancel_window_open('2025-01-15 12:00:00+08', '2025-01-15 13:00:00+08') AS window_open;
RESET ROLE;

-- an application role with EXECUTE on the outbox needs no table rights,
-- and a hostile search_path does not redirect the extension
CREATE SCHEMA evil;
CREATE TABLE evil.cancellations (x int);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
CREATE FUNCTION evil.format(text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
GRANT USAGE ON SCHEMA evil TO apc_app;
SET ROLE apc_app;
SET search_path = evil, public;
SELECT (alipayplus_request_cancel(payment_request_id => 'sec-2')).state;
RESET search_path;
RESET ROLE;
SELECT state, requested_at > '2020-01-01' AS real_now FROM alipayplus.cancellations WHERE payment_request_id = 'sec-2';
SELECT count(*) AS evil_rows FROM evil.cancellations;
DROP SCHEMA evil CASCADE;
DROP ROLE apc_nobody;
REVOKE ALL ON FUNCTION alipayplus_request_cancel(text, text, timestamptz) FROM apc_app;
DROP ROLE apc_app;
