#!/usr/bin/env bash
# test/nopreload.sh: the default set-up of the README, without any
# shared_preload_libraries entry, works: the library is loaded by the first
# call in each session and picks up the alipayplus.* lines of
# postgresql.conf then.
#
# It leaves the main rig cluster alone: it makes its own throwaway cluster
# in $RIG/nopreload (port 54334, unix socket only, shared_preload_libraries
# empty), configured like rig_cluster (scripts/lib.sh) for the same running
# gateway and keys.  In fresh sessions (library not loaded at their start):
#
# 1. CREATE EXTENSION;
# 2. one S, one F and one U call through the fake gateway, each as the
#    first statement of its session; the ledger and the gateway agree;
# 3. alipayplus.public_key_file set to '' before the library is loaded
#    (and, in another session, after LOAD): the call fails with 55000
#    'configuration parameter "alipayplus.public_key_file" is not set',
#    nothing is marked and nothing reaches the gateway.
#
# Run as root from the repository:  bash test/nopreload.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DIR=$RIG/nopreload
NPGDATA=$DIR/pgdata
NPORT=54334
DB=apc_nopreload
TAG=$(date +%s%N)

# every psql below goes to the throwaway cluster, never to the main one
export PGHOST=$DIR PGPORT=$NPORT PGUSER=postgres PGDATABASE=postgres

pg_ctl_np() { as_postgres $PGBIN/pg_ctl -D "$NPGDATA" "$@"; }

cleanup() {
	if [ -f "$NPGDATA/postmaster.pid" ]; then
		pg_ctl_np -m immediate stop >/dev/null 2>&1
	fi
}
trap cleanup EXIT

# session: a psql script from stdin in a new session of the test database
session() {
	$PGBIN/psql -X -q -d "$DB" -v ON_ERROR_STOP=0 -v VERBOSITY=default \
		-P format=unaligned -P tuples_only=on
}



# ---------------------------------------------------------------------------
echo "# a throwaway cluster in $DIR on port $NPORT, no shared_preload_libraries"
rm -rf "$DIR"
mkdir -p "$DIR"
chown postgres:postgres "$DIR"
init_cluster "$NPGDATA" "$NPORT" "$DIR" <<<"shared_preload_libraries = ''" ||
	{ not_ok "initdb"; finish; }
pg_ctl_np -l "$DIR/postgres.log" -w start >/dev/null || { not_ok "start the cluster"; finish; }
expect "shared_preload_libraries is empty" "" "$(q postgres "SHOW shared_preload_libraries")"
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database"; finish; }

# ---------------------------------------------------------------------------
echo "# 1. CREATE EXTENSION"
if q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null; then
	ok "CREATE EXTENSION alipayplus_cancel without preloading"
else
	not_ok "CREATE EXTENSION alipayplus_cancel without preloading"
	finish
fi

# ---------------------------------------------------------------------------
echo "# 2. S, F and U calls, each the first statement of a fresh session"
n=0
for id in "np-ok-$TAG" "f-PROCESS_FAIL-np-$TAG" "u-UNKNOWN_EXCEPTION-np-$TAG"; do
	n=$((n + 1))
	session >"$DIR/call$n.out" 2>&1 <<SQL
SELECT 'LOADED_BEFORE=' || count(*) FROM pg_settings WHERE name = 'alipayplus.timeout_ms';
SELECT 'CALL=' || result_status || '/' || result_code || '/' || state
	FROM alipayplus_cancel_payment(payment_request_id => '$id');
SELECT 'LOADED_AFTER=' || count(*) FROM pg_settings WHERE name = 'alipayplus.timeout_ms';
SQL
	sed 's/^/#   /' "$DIR/call$n.out"
	expect "call $n: the library was not loaded when the session started" 0 \
		"$(line_value "$DIR/call$n.out" LOADED_BEFORE)"
	expect "call $n: the library is loaded after the call" 1 \
		"$(line_value "$DIR/call$n.out" LOADED_AFTER)"
	expect "call $n: the gateway saw $id once" 1 "$(gateway_requests "$id")"
done
expect "S call" "S/SUCCESS/CANCELLED" "$(line_value "$DIR/call1.out" CALL)"
expect "F call" "F/PROCESS_FAIL/CANCELLING" "$(line_value "$DIR/call2.out" CALL)"
expect "U call" "U/UNKNOWN_EXCEPTION/CANCELLING" "$(line_value "$DIR/call3.out" CALL)"
expect "the attempts: verified S, F and U" "S:true F:true U:true" \
	"$(q "$DB" "SELECT string_agg(result_status || ':' || signature_verified, ' ' ORDER BY attempt_id)
		FROM alipayplus.cancel_attempts")"

# ---------------------------------------------------------------------------
echo "# 3. alipayplus.public_key_file unset"
session >"$DIR/config.out" 2>&1 <<SQL
SET alipayplus.public_key_file = '';
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'np-nokey-1-$TAG');
\\echo PLACEHOLDER_STATE=:SQLSTATE
\\echo PLACEHOLDER_MESSAGE=:LAST_ERROR_MESSAGE
SQL
session >"$DIR/config2.out" 2>&1 <<SQL
LOAD 'alipayplus_cancel';
SET alipayplus.public_key_file = '';
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'np-nokey-2-$TAG');
\\echo LOADED_STATE=:SQLSTATE
\\echo LOADED_MESSAGE=:LAST_ERROR_MESSAGE
SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x');
\\echo VERIFY_STATE=:SQLSTATE
SQL
sed 's/^/#   /' "$DIR/config.out" "$DIR/config2.out"
MSG='configuration parameter "alipayplus.public_key_file" is not set'
expect "set before the library loads: SQLSTATE 55000" 55000 "$(line_value "$DIR/config.out" PLACEHOLDER_STATE)"
expect "set before the library loads: message" "$MSG" "$(line_value "$DIR/config.out" PLACEHOLDER_MESSAGE)"
expect "set after LOAD: SQLSTATE 55000" 55000 "$(line_value "$DIR/config2.out" LOADED_STATE)"
expect "set after LOAD: message" "$MSG" "$(line_value "$DIR/config2.out" LOADED_MESSAGE)"
expect "alipayplus_verify without a public key: SQLSTATE 55000" 55000 \
	"$(line_value "$DIR/config2.out" VERIFY_STATE)"
if grep -q "HINT:  A superuser must set it" "$DIR/config.out"; then
	ok "the error hints at how to set it"
else
	not_ok "no 'A superuser must set it' hint"
fi
expect "nothing marked for the refused calls" 0 \
	"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE payment_request_id LIKE 'np-nokey-%'")"
expect "nothing sent for the refused calls" "0 0" \
	"$(gateway_requests "np-nokey-1-$TAG") $(gateway_requests "np-nokey-2-$TAG")"

# ---------------------------------------------------------------------------
if pg_ctl_np -m fast -w stop >/dev/null; then
	ok "cluster stopped"
else
	not_ok "stop the cluster"
fi
[ "$checks_failed" -eq 0 ] && rm -rf "$DIR"
finish
