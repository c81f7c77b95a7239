#!/usr/bin/env bash
# test/upgrade.sh: ALTER EXTENSION alipayplus_cancel UPDATE from every
# released version (1.0, 1.1, 1.2) to the current one (default_version).
#
# A database on the old version gets a bound orders table, a grant, a DBA
# policy row and cancellations in every state (cancelled, flagged, waiting
# for a retry, queued); then it is updated.  Its extension objects must
# then match, one by one, those of a fresh install in another database
# (functions with their bodies and privileges, tables with their columns,
# constraints, indexes and triggers, views), nothing of the ledger may be
# lost, and the queue must carry on under the current processor.
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

OLD=apc_upgrade_old
NEW=apc_upgrade_new
ROLE=apc_upgrade_app
CURRENT=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$REPO/alipayplus_cancel.control")

upgrade_from() {
FROM=$1
TAG=$(date +%s%N)

for db in $OLD $NEW; do
	q postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
	q postgres "CREATE DATABASE $db" >/dev/null || { not_ok "create database $db"; finish; }
done
q postgres "DROP ROLE IF EXISTS $ROLE" >/dev/null 2>&1
q postgres "CREATE ROLE $ROLE" >/dev/null

psql_rig -q -d $OLD >/dev/null <<SQL || not_ok "set up $FROM"
CREATE EXTENSION alipayplus_cancel VERSION '$FROM';
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders (req) VALUES ('up-ok-$TAG'), ('f-PROCESS_FAIL-up-$TAG'),
	('u-UNKNOWN_EXCEPTION-up-$TAG'), ('up-queued-$TAG'), ('seq-U.S-up-$TAG');
GRANT EXECUTE ON FUNCTION alipayplus_request_cancel(text, text, timestamptz) TO $ROLE;
DO \$\$ BEGIN
	IF to_regprocedure('alipayplus_request_cancel_all(text[], boolean)') IS NOT NULL THEN
		GRANT EXECUTE ON FUNCTION alipayplus_request_cancel_all(text[], boolean) TO $ROLE;
	END IF;
END \$\$;
INSERT INTO alipayplus.result_policy VALUES ('UP_CODE_$TAG', 'retry', 'added by a DBA');
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'up-ok-$TAG');
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'f-PROCESS_FAIL-up-$TAG');
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'seq-U.S-up-$TAG');
SELECT alipayplus_request_cancel(payment_request_id => 'up-queued-$TAG');
SQL
expect "$FROM installed" "$FROM" "$(q $OLD "SELECT extversion FROM pg_extension WHERE extname = 'alipayplus_cancel'")"
before=$(q $OLD "SELECT string_agg(sent_id || ':' || state || ':' || attempt_count || ':' || needs_attention, ' ' ORDER BY cancellation_id) FROM alipayplus.cancellations")
attempts_before=$(q $OLD "SELECT count(*) FROM alipayplus.cancel_attempts")

q $OLD "ALTER EXTENSION alipayplus_cancel UPDATE" >/dev/null || not_ok "ALTER EXTENSION UPDATE"
expect "updated from $FROM to $CURRENT" "$CURRENT" "$(q $OLD "SELECT extversion FROM pg_extension WHERE extname = 'alipayplus_cancel'")"
q $NEW "CREATE EXTENSION alipayplus_cancel" >/dev/null || not_ok "fresh $CURRENT"

# every object of the extension, described with what defines it
describe() {
	q "$1" "
	WITH members AS (
		SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
		WHERE e.extname = 'alipayplus_cancel' AND d.deptype = 'e'
	)
	SELECT string_agg(line, E'\n' ORDER BY line) FROM (
		SELECT pg_describe_object(m.classid, m.objid, 0) AS line FROM members m
		UNION ALL
		SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
			|| ' acl=' || coalesce(array_to_string(ARRAY(
				SELECT x FROM unnest(p.proacl::text[]) x WHERE x NOT LIKE '$ROLE=%' ORDER BY x), ','), 'default')
		FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
		UNION ALL
		SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
			|| CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
			|| coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
		FROM members m JOIN pg_attribute a ON m.classid = 'pg_class'::regclass AND a.attrelid = m.objid
			AND a.attnum > 0 AND NOT a.attisdropped
		LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
		UNION ALL
		SELECT 'relation ' || c.oid::regclass || ' acl=' || coalesce(c.relacl::text, 'default')
		FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
		UNION ALL
		SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
		FROM members m JOIN pg_constraint co ON m.classid = 'pg_class'::regclass AND co.conrelid = m.objid
		UNION ALL
		SELECT 'index ' || pg_get_indexdef(i.indexrelid)
		FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
		UNION ALL
		SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
		FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid
			AND NOT t.tgisinternal
		UNION ALL
		SELECT 'view ' || c.oid::regclass || ' ' || md5(pg_get_viewdef(c.oid))
		FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid AND c.relkind = 'v'
		UNION ALL
		SELECT 'config ' || c.oid::regclass || ' ' || coalesce(x.cond, '')
		FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(relid, cond)
		JOIN pg_class c ON c.oid = x.relid WHERE e.extname = 'alipayplus_cancel'
	) s"
}
describe $OLD >"$RIG/upgrade_old.txt"
describe $NEW >"$RIG/upgrade_new.txt"
if diff "$RIG/upgrade_new.txt" "$RIG/upgrade_old.txt" >"$RIG/upgrade.diff"; then
	ok "the objects updated from $FROM match a fresh $CURRENT install ($(wc -l <"$RIG/upgrade_new.txt") lines of description)"
else
	not_ok "the objects updated from $FROM differ from a fresh $CURRENT install: $(head -20 "$RIG/upgrade.diff" | tr '\n' ' ')"
fi

expect "no ledger row changed by the update" "$before" \
	"$(q $OLD "SELECT string_agg(sent_id || ':' || state || ':' || attempt_count || ':' || needs_attention, ' ' ORDER BY cancellation_id) FROM alipayplus.cancellations")"
expect "no attempt lost" "$attempts_before" "$(q $OLD "SELECT count(*) FROM alipayplus.cancel_attempts")"
expect "the grant survived" "t" \
	"$(q $OLD "SELECT has_function_privilege('$ROLE', 'alipayplus_request_cancel(text, text, timestamptz)', 'EXECUTE')")"
[ "$FROM" = 1.0 ] ||
	expect "the grant of alipayplus_request_cancel_all survived its new argument (1.3)" "t" \
		"$(q $OLD "SELECT has_function_privilege('$ROLE', 'alipayplus_request_cancel_all(text[], boolean, boolean)', 'EXECUTE')")"
expect "the DBA's policy row survived" "1" \
	"$(q $OLD "SELECT count(*) FROM alipayplus.result_policy WHERE result_code = 'UP_CODE_$TAG'")"
expect "the orders are still guarded" "ZA001" \
	"$($PGBIN/psql -X -qAt -d $OLD -v VERBOSITY=verbose -c "UPDATE orders SET st = 'PAID' WHERE req = 'up-ok-$TAG'" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p')"

# the queue carries on under the current version
q $OLD "UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE state = 'CANCELLING' AND NOT needs_attention" >/dev/null
psql_rig -q -d $OLD -c "SET client_min_messages = warning" -c "CALL alipayplus_process_backlog()" >/dev/null 2>&1 ||
	not_ok "the $CURRENT processor ran on the database updated from $FROM"
expect "after the update the queue carries on: queued and retried ones cancelled, the flagged one still flagged" \
	"up-ok-$TAG:CANCELLED f-PROCESS_FAIL-up-$TAG:CANCELLING:t seq-U.S-up-$TAG:CANCELLED up-queued-$TAG:CANCELLED" \
	"$(q $OLD "SELECT string_agg(sent_id || ':' || state || CASE WHEN needs_attention THEN ':t' ELSE '' END, ' ' ORDER BY cancellation_id) FROM alipayplus.cancellations")"
expect "the orders followed" "CANCELLED CANCELLING CANCELLED CANCELLED" \
	"$(q $OLD "SELECT string_agg(st, ' ' ORDER BY c.cancellation_id) FROM orders o JOIN alipayplus.cancellations c ON c.sent_id = o.req")"
expect "the database updated from $FROM has the 1.1 and 1.2 objects" "t|t|c|t" \
	"$(q $OLD "SELECT to_regprocedure('alipayplus_request_cancel_all(text[], boolean, boolean)') IS NOT NULL, to_regclass('alipayplus.stats') IS NOT NULL,
		(SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = 'alipayplus._settle(alipayplus.cancellations, record, text)'::regprocedure),
		to_regprocedure('alipayplus._apply_result(alipayplus.cancellations, alipayplus.cancel_attempts)') IS NULL")"
expect "the database updated from $FROM has the 1.3 objects" "t|t|t" \
	"$(q $OLD "SELECT to_regprocedure('alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text, text[])') IS NOT NULL,
		to_regprocedure('alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text)') IS NULL,
		(SELECT note LIKE '%alipayplus.public_key_file%' FROM alipayplus.result_policy WHERE builtin AND result_code = 'local.bad_signature')")"
expect "a flagged row from $FROM can be closed after the update" "f-PROCESS_FAIL-up-$TAG|closed after the update" \
	"$(q $OLD "SELECT c.sent_id, c.attention_closed_note
		FROM alipayplus_close_attention((SELECT x.cancellation_id FROM alipayplus.cancellations x WHERE x.needs_attention), 'closed after the update') c")"
expect "and leaves the attention view" "0" "$(q $OLD "SELECT count(*) FROM alipayplus.attention")"

q postgres "DROP DATABASE $OLD WITH (FORCE)" >/dev/null 2>&1
q postgres "DROP DATABASE $NEW WITH (FORCE)" >/dev/null 2>&1
q postgres "DROP ROLE IF EXISTS $ROLE" >/dev/null 2>&1
}

upgrade_from 1.0
upgrade_from 1.1
upgrade_from 1.2
finish
