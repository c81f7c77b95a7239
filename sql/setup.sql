--
-- setup: helpers for the other test files
--
-- gw_log() returns what the fake gateway logged (one jsonb per request)
-- since the last gw_mark(); errcheck() runs a statement and returns its
-- SQLSTATE and message, so that tests show error codes.
--
CREATE TABLE gw_offset (off bigint NOT NULL);
INSERT INTO gw_offset
SELECT (pg_stat_file(current_setting('apc_rig.dir') || '/gateway.jsonl', true)).size;

CREATE FUNCTION gw_mark() RETURNS void LANGUAGE sql AS $$
	UPDATE gw_offset
	SET off = coalesce((pg_stat_file(current_setting('apc_rig.dir') || '/gateway.jsonl', true)).size, 0)
$$;

CREATE FUNCTION gw_log() RETURNS TABLE (n bigint, j jsonb) LANGUAGE sql AS $$
	SELECT l.n, l.line::jsonb
	FROM gw_offset,
		 regexp_split_to_table(
			pg_read_file(current_setting('apc_rig.dir') || '/gateway.jsonl', coalesce(off, 0),
						 1000000000, true), E'\n') WITH ORDINALITY AS l(line, n)
	WHERE l.line <> ''
$$;

CREATE FUNCTION gw_requests(id text) RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM gw_log() g WHERE g.j->>'id' = id
$$;

CREATE FUNCTION gw_last(id text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT g.j FROM gw_log() g WHERE g.j->>'id' = id ORDER BY g.n DESC LIMIT 1
$$;

CREATE FUNCTION errcheck(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	code text;
	msg text;
	detail text;
	hint text;
BEGIN
	EXECUTE stmt;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
		detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
	RETURN code || ': ' || msg
		|| CASE WHEN detail <> '' THEN ' DETAIL: ' || detail ELSE '' END
		|| CASE WHEN hint <> '' THEN ' HINT: ' || hint ELSE '' END;
END;
$$;

SELECT gw_mark();
SELECT count(*) AS requests_since_mark FROM gw_log();
-- the extension is installed in public and its tables in schema alipayplus
SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'alipayplus' AND c.relkind = 'r' GROUP BY 1;
SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
	AND p.proname LIKE 'alipayplus%' ORDER BY 1;
