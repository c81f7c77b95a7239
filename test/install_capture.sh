#!/usr/bin/env bash
# test/install_capture.sh: the extension's views bind pg_catalog's functions
# and operators, not look-alikes planted in the extension's schema.  A view
# binds its calls when it is created, under the install script's search_path
# (the extension's schema, then pg_catalog's implicit place); where
# pg_catalog's candidate is not an exact match (format's VARIADIC "any",
# anynonarray || text), an exact one in that schema would win, and a role
# that may create objects there would have its code run by every reader of
# alipayplus.attention, the installing superuser included.  Checked for a
# fresh install and for an update from 1.0 (the update replaces the views).
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

ROLE=apc_capture_role
for DB in apc_capture_fresh apc_capture_update; do
	q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	q postgres "CREATE DATABASE $DB" >/dev/null
done
q postgres "DROP ROLE IF EXISTS $ROLE" >/dev/null 2>&1
q postgres "CREATE ROLE $ROLE" >/dev/null

plant() {	# DB: a role with CREATE on public plants exact-type look-alikes
	q "$1" "GRANT CREATE ON SCHEMA public TO $ROLE" >/dev/null
	$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$1" <<SQL >/dev/null
SET ROLE $ROLE;
CREATE FUNCTION public.format(text, integer, text) RETURNS text
	LANGUAGE sql AS \$\$SELECT 'planted format'\$\$;
CREATE FUNCTION public.format(text, timestamptz) RETURNS text
	LANGUAGE sql AS \$\$SELECT 'planted format'\$\$;
CREATE FUNCTION public.planted_concat(text, integer) RETURNS text
	LANGUAGE sql AS \$\$SELECT 'planted concat'\$\$;
CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = integer, FUNCTION = public.planted_concat);
SQL
}

# what the extension's views depend on outside pg_catalog and its own schema
foreign_calls() {
	q "$1" "SELECT count(*) FROM pg_depend d
		JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
		JOIN pg_class v ON v.oid = r.ev_class
		LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
		LEFT JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid
		WHERE v.relnamespace = 'alipayplus'::regnamespace
		AND coalesce(p.pronamespace, o.oprnamespace) = 'public'::regnamespace"
}

plant apc_capture_fresh
q apc_capture_fresh "CREATE EXTENSION alipayplus_cancel" >/dev/null
expect "fresh install: no view of the extension calls a function or operator planted in its schema" \
	"0" "$(foreign_calls apc_capture_fresh)"

plant apc_capture_update
q apc_capture_update "CREATE EXTENSION alipayplus_cancel VERSION '1.0'" >/dev/null
q apc_capture_update "ALTER EXTENSION alipayplus_cancel UPDATE" >/dev/null
expect "update from 1.0: no view of the extension calls a function or operator planted in its schema" \
	"0" "$(foreign_calls apc_capture_update)"
expect "and a reason in alipayplus.attention is the extension's own text" "t" \
	"$(q apc_capture_update "INSERT INTO alipayplus.cancellations (sent_field, sent_id, payment_request_id, state, unanswered_streak, last_result_code, next_attempt_at, requested_at)
		VALUES ('paymentRequestId', 'cap-1', 'cap-1', 'CANCELLING', 5, 'local.timeout', now() + interval '1 hour', now());
		SELECT bool_and(reason NOT LIKE '%planted%') FROM alipayplus.attention")"

for DB in apc_capture_fresh apc_capture_update; do
	q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
done
q postgres "DROP ROLE IF EXISTS $ROLE" >/dev/null
finish
