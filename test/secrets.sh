#!/usr/bin/env bash
# test/secrets.sh: the acquirer's private key never leaks, and roles other
# than superusers can neither read the key settings nor change any
# alipayplus.* setting nor sign.
#
# Uses the main rig cluster, its own database and its own login role.
# A line from the middle of the base64 body of $RIG/keys/client.pem (and of
# its PKCS#1 twin) must appear nowhere in: the server log, the gateway log,
# the alipayplus tables after calls of every outcome, the output of SHOW ALL
# and pg_settings as a non-superuser, and the errors raised when
# alipayplus.private_key_file names a garbage file, a world-readable copy
# of the key or a missing file (whose SQLSTATE and wording are checked).
# A non-superuser gets 42501 for SHOW alipayplus.private_key_file (also in a
# fresh session, before the library is loaded), for SET of every
# alipayplus.* setting, for alipayplus_signature() and for the tables.
#
# Run as root from the repository:  bash test/secrets.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_secrets
ROLE=apc_secrets_user
TAG=$(date +%s%N)
KEYS=$RIG/keys
TMP=$(mktemp -d /tmp/apc_secrets.XXXXXX)
GATEWAY_URL="https://localhost:$(cat "$RIG/gateway.port")"

cleanup() {
	q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	q postgres "DROP ROLE IF EXISTS $ROLE" >/dev/null 2>&1
	rm -rf "$TMP"
}
trap cleanup EXIT

# middle_line PEM: a line from the middle of a PEM file's base64 body
middle_line() {
	sed -n '/^-----BEGIN/,/^-----END/{/^-----/d;p}' "$1" | awk '{l[NR] = $0} END {print l[int(NR / 2)]}'
}

# session USER: a psql script from stdin, as USER, in the test database
session() {
	$PGBIN/psql -X -q -U "$1" -d "$DB" -v ON_ERROR_STOP=0 -v VERBOSITY=verbose \
		-P format=unaligned -P tuples_only=on
}

# line_value FILE KEY: the text after "KEY=" on the first line starting so
line_value() { sed -n "s/^$2=//p" "$1" | head -n 1; }

# no_secret WHAT FILE...: neither key line occurs in the files
no_secret() {
	local what=$1
	shift
	if grep -qF -e "$KEYLINE" -e "$KEYLINE1" "$@"; then
		not_ok "key material found in $what"
	else
		ok "no key material in $what"
	fi
}

KEYLINE=$(middle_line "$KEYS/client.pem")
KEYLINE1=$(middle_line "$KEYS/client_pkcs1.pem")
if [ ${#KEYLINE} -eq 64 ] && [ ${#KEYLINE1} -eq 64 ] &&
	grep -qF "$KEYLINE" "$KEYS/client.pem" "$KEYS/world_readable.pem"; then
	ok "took 64-character lines from the middle of client.pem and client_pkcs1.pem"
else
	not_ok "could not take a key line from $KEYS/client.pem ('$KEYLINE')"
	finish
fi

echo "# setting up database $DB and role $ROLE"
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "DROP ROLE IF EXISTS $ROLE" >/dev/null 2>&1
q postgres "CREATE ROLE $ROLE LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" >/dev/null &&
	q postgres "CREATE DATABASE $DB" >/dev/null &&
	q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null ||
	{ not_ok "set-up"; finish; }
# the role may cancel (through the SECURITY DEFINER function) but not sign
q "$DB" "GRANT EXECUTE ON FUNCTION alipayplus_cancel_payment(text, text) TO $ROLE" >/dev/null

# ---------------------------------------------------------------------------
echo "# 1. non-superuser, fresh session (the library is not loaded yet unless preloaded)"
session "$ROLE" >"$TMP/fresh.out" 2>&1 <<SQL
SELECT 'FRESH_LOADED=' || count(*) FROM pg_settings WHERE name = 'alipayplus.timeout_ms';
SHOW alipayplus.private_key_file;
\echo FRESH_SHOW=:SQLSTATE
SELECT current_setting('alipayplus.private_key_file');
\echo FRESH_CURRENT_SETTING=:SQLSTATE
SET alipayplus.gateway_url = 'https://localhost:1';
SET alipayplus.private_key_file = '$KEYS/world_readable.pem';
SELECT 'FRESH_CALL=' || result_status || '/' || result_code
	FROM alipayplus_cancel_payment(payment_request_id => 'fresh-$TAG');
SELECT 'FRESH_URL_AFTER_LOAD=' || current_setting('alipayplus.gateway_url');
SQL
sed 's/^/#   /' "$TMP/fresh.out"
if [ "$(grep '^FRESH_LOADED=' "$TMP/fresh.out")" = "FRESH_LOADED=0" ]; then
	echo "# the library was not loaded when the session started (not preloaded)"
else
	echo "# the library was already loaded when the session started (preloaded)"
fi
expect "fresh session: SHOW alipayplus.private_key_file refused (42501)" 42501 \
	"$(line_value "$TMP/fresh.out" FRESH_SHOW)"
expect "fresh session: current_setting('alipayplus.private_key_file') refused (42501)" 42501 \
	"$(line_value "$TMP/fresh.out" FRESH_CURRENT_SETTING)"
expect "fresh session: settings SET before the library loaded do not redirect the call" \
	"FRESH_CALL=S/SUCCESS" "$(grep '^FRESH_CALL=' "$TMP/fresh.out")"
expect "fresh session: the configured gateway_url is in force after the load" \
	"FRESH_URL_AFTER_LOAD=$GATEWAY_URL" "$(grep '^FRESH_URL_AFTER_LOAD=' "$TMP/fresh.out")"
r=$(PGOPTIONS="-c alipayplus.gateway_url=https://localhost:1" $PGBIN/psql -X -qAt -U "$ROLE" -d "$DB" \
	-c "SELECT result_status || '/' || result_code FROM alipayplus_cancel_payment(payment_request_id => 'pgoptions-$TAG')" 2>&1)
# a client connection option for a parameter whose library is not loaded yet
# is kept as a placeholder and refused when the library loads; PostgreSQL
# then falls back to the boot value, not to postgresql.conf, so the call may
# fail for want of a gateway_url: refused is fine, redirected is not
if [ "$r" = "S/SUCCESS" ]; then
	ok "connection option (PGOPTIONS) from a non-superuser: the call went to the configured gateway"
elif echo "$r" | grep -q -e 'local\.' -e '^[SFU]/'; then
	not_ok "connection option (PGOPTIONS) from a non-superuser redirected the call: $r"
else
	ok "connection option (PGOPTIONS) from a non-superuser: refused, not redirected ($(echo "$r" | grep -m1 -e ERROR -e FATAL))"
fi

# ---------------------------------------------------------------------------
echo "# 2. non-superuser with the library loaded"
SETTINGS=$(q "$DB" "SELECT alipayplus_cancel_deadline(now()) IS NOT NULL; LOAD 'alipayplus_cancel';
	SELECT string_agg(name, ' ' ORDER BY name) FROM pg_settings
	WHERE name LIKE 'alipayplus.%' AND context <> 'postmaster'" | tail -n 1)
nset=$(echo "$SETTINGS" | wc -w)
if [ "$nset" -ge 10 ]; then
	ok "found $nset alipayplus.* settings"
else
	not_ok "found only $nset alipayplus.* settings: $SETTINGS"
fi
{
	# loads the library: alipayplus_verify is a C function open to PUBLIC
	echo "SELECT 'LOADED=' || alipayplus_verify('/p', 'c', 't', '{}', 'x');"
	for s in private_key_file public_key_file ca_file proxy database_name; do
		echo "SHOW alipayplus.$s;"
		echo "\\echo SHOW_$s=:SQLSTATE"
	done
	# read at server start only (the rig preloads the library)
	echo "SET alipayplus.database_name TO DEFAULT;"
	echo "\\echo SET_database_name=:SQLSTATE"
	for s in $SETTINGS; do
		echo "SET $s TO DEFAULT;"
		echo "\\echo SET_$s=:SQLSTATE"
		echo "SELECT set_config('$s', current_setting('$s', true), false);"
		echo "\\echo SETCONFIG_$s=:SQLSTATE"
	done
	echo "ALTER ROLE CURRENT_USER SET alipayplus.timeout_ms = 1;"
	echo "\\echo ALTER_ROLE_SET=:SQLSTATE"
	echo "SELECT alipayplus_signature('/p', 'c', 't', '{}');"
	echo "\\echo SIGNATURE=:SQLSTATE"
	echo "\\echo SIGNATURE_MESSAGE=:LAST_ERROR_MESSAGE"
	for t in cancel_attempts cancellations processor_runs; do
		echo "SELECT count(*) FROM alipayplus.$t;"
		echo "\\echo SELECT_$t=:SQLSTATE"
	done
	echo "SELECT * FROM alipayplus._call_cancel(NULL, 'direct-$TAG');"
	echo "\\echo CALL_INTERNAL=:SQLSTATE"
	echo "\\echo SHOWALL_BEGIN"
	echo "SHOW ALL;"
	echo "SELECT s::text FROM pg_settings s;"
	echo "\\echo SHOWALL_END"
} | session "$ROLE" >"$TMP/user.out" 2>&1
expect "library loaded in the non-superuser session" "LOADED=false" "$(grep '^LOADED=' "$TMP/user.out")"
for s in private_key_file public_key_file ca_file proxy database_name; do
	expect "non-superuser: SHOW alipayplus.$s refused" 42501 "$(line_value "$TMP/user.out" "SHOW_$s")"
done
expect "non-superuser: SET alipayplus.database_name refused (55P02, a server-start setting)" 55P02 \
	"$(line_value "$TMP/user.out" "SET_database_name")"
bad=""
for s in $SETTINGS; do
	[ "$(line_value "$TMP/user.out" "SET_$s")" = 42501 ] || bad+=" SET:$s=$(line_value "$TMP/user.out" "SET_$s")"
	[ "$(line_value "$TMP/user.out" "SETCONFIG_$s")" = 42501 ] || bad+=" set_config:$s=$(line_value "$TMP/user.out" "SETCONFIG_$s")"
done
expect "non-superuser: SET and set_config() of every alipayplus.* setting refused (42501)" "" "$bad"
expect "non-superuser: ALTER ROLE ... SET alipayplus.timeout_ms refused" 42501 \
	"$(line_value "$TMP/user.out" ALTER_ROLE_SET)"
expect "non-superuser: EXECUTE alipayplus_signature refused" 42501 "$(line_value "$TMP/user.out" SIGNATURE)"
expect "non-superuser: alipayplus_signature error wording" \
	"permission denied for function alipayplus_signature" "$(line_value "$TMP/user.out" SIGNATURE_MESSAGE)"
for t in cancel_attempts cancellations processor_runs; do
	expect "non-superuser: SELECT from alipayplus.$t refused" 42501 "$(line_value "$TMP/user.out" "SELECT_$t")"
done
expect "non-superuser: alipayplus._call_cancel refused" 42501 "$(line_value "$TMP/user.out" CALL_INTERNAL)"
sed -n '/^SHOWALL_BEGIN$/,/^SHOWALL_END$/p' "$TMP/user.out" >"$TMP/showall.out"
if [ "$(wc -l <"$TMP/showall.out")" -gt 300 ] && grep -q '^alipayplus.timeout_ms|' "$TMP/showall.out"; then
	ok "SHOW ALL and pg_settings as the non-superuser captured ($(wc -l <"$TMP/showall.out") lines)"
else
	not_ok "SHOW ALL / pg_settings output looks incomplete"
fi
if grep -qe "$KEYS/client.pem" -e '^alipayplus.private_key_file' -e 'alipayplus.private_key_file,' "$TMP/showall.out"; then
	not_ok "SHOW ALL / pg_settings shows alipayplus.private_key_file to a non-superuser"
else
	ok "SHOW ALL / pg_settings hide alipayplus.private_key_file from a non-superuser"
fi
no_secret "SHOW ALL / pg_settings as a non-superuser" "$TMP/showall.out"
no_secret "the non-superuser's session output" "$TMP/fresh.out" "$TMP/user.out"

# ---------------------------------------------------------------------------
echo "# 3. superuser: calls of every outcome, then broken key files"
{
	echo "SET client_min_messages = debug5;"
	for id in "ok-$TAG" "f-PROCESS_FAIL-$TAG" "u-UNKNOWN_EXCEPTION-$TAG" "badsig-$TAG" \
		"unsigned-S-$TAG" "halfsigned-$TAG" "otherclient-$TAG" "badjson-$TAG" \
		"noresult-$TAG" "http500-$TAG" "reset-$TAG"; do
		echo "SELECT 'CALL=' || result_status || '/' || result_code FROM alipayplus_cancel_payment(payment_request_id => '$id');"
	done
	echo "SELECT 'QUEUED=' || state FROM alipayplus_request_cancel(payment_request_id => 'queued-$TAG');"
	echo "SELECT 'PROCESSED=' || cancelled FROM alipayplus_process_cancellations();"
	echo "SELECT 'SIGNATURE=' || alipayplus_signature('/p', 'c', 't', '{}');"
	n=0
	for f in garbage.pem world_readable.pem missing.pem; do
		n=$((n + 1))
		echo "SET alipayplus.private_key_file = '$KEYS/$f';"
		echo "SELECT alipayplus_signature('/p', 'c', 't', '{}');"
		echo "\\echo SIG_$n=:SQLSTATE"
		echo "\\echo SIG_${n}_MESSAGE=:LAST_ERROR_MESSAGE"
		echo "SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'keyfile-$n-$TAG');"
		echo "\\echo CALL_$n=:SQLSTATE"
		echo "\\echo CALL_${n}_MESSAGE=:LAST_ERROR_MESSAGE"
	done
	echo "RESET alipayplus.private_key_file;"
	echo "SELECT 'BACK=' || result_status FROM alipayplus_cancel_payment(payment_request_id => 'back-$TAG');"
} | session postgres >"$TMP/super.out" 2>&1
grep -A 3 '^ERROR:' "$TMP/super.out" | grep -v -e '^--$' -e '^CONTEXT:' -e '^PL/pgSQL' | sed 's/^/#   /'
expect "superuser: 11 calls made" 11 "$(grep -c '^CALL=' "$TMP/super.out")"
expect "superuser: outcomes" "S F U U U U U U U U U" \
	"$(grep '^CALL=' "$TMP/super.out" | cut -c6 | tr '\n' ' ' | sed 's/ $//')"
expect "superuser: queued cancellation processed" "QUEUED=CANCELLING PROCESSED=1" \
	"$(grep -e '^QUEUED=' -e '^PROCESSED=' "$TMP/super.out" | tr '\n' ' ' | sed 's/ $//')"
if grep -qE '^SIGNATURE=algorithm=RSA256,keyVersion=1,signature=' "$TMP/super.out"; then
	ok "superuser: alipayplus_signature signs"
else
	not_ok "superuser: alipayplus_signature gave no signature"
fi
G=$KEYS/garbage.pem
W=$KEYS/world_readable.pem
M=$KEYS/missing.pem
for w in SIG CALL; do
	expect "garbage key file ($w): SQLSTATE" F0000 "$(line_value "$TMP/super.out" "${w}_1")"
	expect "garbage key file ($w): message" \
		"key file \"$G\" named by alipayplus.private_key_file does not hold a usable RSA private key" \
		"$(line_value "$TMP/super.out" "${w}_1_MESSAGE")"
	expect "world-readable key file ($w): SQLSTATE" F0000 "$(line_value "$TMP/super.out" "${w}_2")"
	expect "world-readable key file ($w): message" \
		"private key file \"$W\" has group or world access" \
		"$(line_value "$TMP/super.out" "${w}_2_MESSAGE")"
	expect "missing key file ($w): SQLSTATE" 58P01 "$(line_value "$TMP/super.out" "${w}_3")"
	expect "missing key file ($w): message" \
		"could not access key file \"$M\" named by alipayplus.private_key_file: No such file or directory" \
		"$(line_value "$TMP/super.out" "${w}_3_MESSAGE")"
done
if grep -q "HINT:  Run chmod 0600 on the file." "$TMP/super.out"; then
	ok "world-readable key file: the error hints at chmod 0600"
else
	not_ok "world-readable key file: no 'Run chmod 0600 on the file.' hint"
fi
expect "after RESET the configured key works again" "BACK=S" "$(grep '^BACK=' "$TMP/super.out")"
expect "no ledger row for the calls refused because of the key file" 0 \
	"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE payment_request_id LIKE 'keyfile-%'")"
if grep -q "PRIVATE KEY" "$TMP/super.out"; then
	not_ok "the superuser session output mentions a PEM private key armour line"
else
	ok "no PEM armour line in the superuser session output (errors included)"
fi
no_secret "the superuser session output (debug5 messages and errors included)" "$TMP/super.out"

# ---------------------------------------------------------------------------
echo "# 4. logs and tables"
q "$DB" "SELECT t FROM (
	SELECT c::text AS t FROM alipayplus.cancellations c
	UNION ALL SELECT a::text FROM alipayplus.cancel_attempts a
	UNION ALL SELECT r::text FROM alipayplus.processor_runs r
	UNION ALL SELECT k::text FROM alipayplus.known_refunds k
	UNION ALL SELECT o::text FROM alipayplus.order_binding o
	UNION ALL SELECT p::text FROM alipayplus.result_policy p) x" >"$TMP/tables.out"
n=$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts")
if [ "$n" -ge 13 ]; then
	ok "the tables hold $n attempts of varied outcomes"
else
	not_ok "expected at least 13 attempts in alipayplus.cancel_attempts, found $n"
fi
no_secret "the alipayplus tables" "$TMP/tables.out"
if grep -qF "$G\" named by alipayplus.private_key_file does not hold" "$RIG/postgres.log"; then
	ok "the server log holds this test's key file errors"
else
	not_ok "the key file errors are not in $RIG/postgres.log (is it the right log?)"
fi
no_secret "the server log $RIG/postgres.log" "$RIG/postgres.log"
if grep -qF "\"id\": \"ok-$TAG\"" "$RIG/gateway.jsonl"; then
	ok "the gateway log holds this test's requests"
else
	not_ok "this test's requests are not in $RIG/gateway.jsonl"
fi
no_secret "the gateway log $RIG/gateway.jsonl" "$RIG/gateway.jsonl"

finish
