#!/usr/bin/env bash
# test/interrupts.sh: a call waiting on the gateway reacts to PostgreSQL's
# interrupts (src/transport.c polls them every 100 ms).
#
# Uses the main rig cluster and its own database.  The gateway is told to
# take 30 s to answer (paymentRequestId "slow-30000-..."), and
# alipayplus.timeout_ms is raised to 60 s for the session, so only the
# interrupt (or statement_timeout) can end the call early:
#
# 1. statement_timeout = 1s: the call gives up on its own 250 ms before the
#    statement would be cancelled, as U local.timeout, recorded in the
#    ledger; the SAME session then makes successful calls.
# 2. pg_cancel_backend() from another session: 57014 "canceling statement
#    due to user request", promptly; the call was waiting with
#    wait_event_type 'Extension'; the same session then calls again fine.
# 3. pg_terminate_backend(): the session ends with 57P01, promptly.
# 4. pg_cancel_backend() during an inquiry (alipayplus_inquire_payment, the
#    same call path): 57014, nothing recorded, the session inquires again.
#
# Run as root from the repository:  bash test/interrupts.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_interrupts
TAG=$(date +%s%N)
ID_ST="slow-30000-st-$TAG"
ID_ST2="slow-30000-st2-$TAG"
ID_ST_AFTER="st-after-$TAG"
ID_ST_AFTER_SLOW="slow-300-st-after-$TAG"
ID_CB="slow-30000-cb-$TAG"
ID_CB_AFTER="cb-after-$TAG"
ID_CB_AFTER_SLOW="slow-300-cb-after-$TAG"
ID_TERM="slow-30000-term-$TAG"
ID_IQ="slow-30000-iq-$TAG"
ID_IQ_AFTER="paid-iq-after-$TAG"
TMP=$(mktemp -d /tmp/apc_interrupts.XXXXXX)
BG_PIDS=()

cleanup() {
	local p
	for p in "${BG_PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	rm -rf "$TMP"
}
trap cleanup EXIT


# psql_session: run a psql script read from stdin in the test database
psql_session() { $PGBIN/psql -X -q -d "$DB" "$@"; }


# backend_waiting ID: "pid|wait_event_type|wait_event" of the backend whose
# query mentions ID, polled until it waits in the extension (10 s at most)
backend_waiting() {
	local deadline=$(($(now_ms) + 10000)) row=""
	while [ "$(now_ms)" -lt $deadline ]; do
		row=$(q "$DB" "SELECT pid || '|' || coalesce(wait_event_type, '') || '|' || coalesce(wait_event, '')
			FROM pg_stat_activity
			WHERE query LIKE '%$1%' AND pid <> pg_backend_pid() AND state = 'active'
			ORDER BY backend_start LIMIT 1")
		case "$row" in
			*"|Extension|"*) break ;;
		esac
		sleep 0.05
	done
	echo "$row"
}


# cancel_waiting LABEL ID SCRIPT OUT: run the psql SCRIPT in the background
# (output to OUT), wait until its backend waits on the gateway for ID, send
# it pg_cancel_backend() and check that the session goes on promptly
cancel_waiting() {
	local label=$1 id=$2 script=$3 out=$4 bg row pid t0
	psql_session -f "$script" >"$out" 2>&1 &
	bg=$!
	BG_PIDS+=("$bg")
	row=$(backend_waiting "$id")
	pid=${row%%|*}
	expect "$label: the waiting call reports wait_event_type/wait_event" \
		"Extension|Extension" "${row#*|}"
	t0=$(now_ms)
	if [[ "$pid" =~ ^[0-9]+$ ]]; then
		expect "$label: signal sent" t "$(q "$DB" "SELECT pg_cancel_backend($pid)")"
	else
		not_ok "$label: no backend found running $id"
	fi
	if wait_exit "$bg" 10; then
		ok "$label: the session finished $(($(now_ms) - t0)) ms after the cancel (< 10 s)"
	else
		not_ok "$label: the session still runs 10 s after the cancel"
		kill "$bg" 2>/dev/null
	fi
	wait "$bg" 2>/dev/null
	sed 's/^/#   /' "$out"
}


echo "# setting up database $DB"
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }

# ---------------------------------------------------------------------------
echo "# 1. statement_timeout shorter than a slow call, then the same session again"
t0=$(now_ms)
psql_session >"$TMP/st.out" 2>&1 <<SQL
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\pset format unaligned
\pset tuples_only on
SET alipayplus.timeout_ms = 60000;
SET statement_timeout = '1s';
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT 'ST_RESULT=' || result_status || '/' || result_code
	FROM alipayplus_cancel_payment(payment_request_id => '$ID_ST');
\echo ST_SQLSTATE=:SQLSTATE
\echo ST_MESSAGE=:LAST_ERROR_MESSAGE
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1000) AS el \gset
\echo ST_ELAPSED_MS=:el
SELECT 'ST_LEDGER=' || count(*) FROM alipayplus.cancellations WHERE payment_request_id = '$ID_ST';
-- the same session, same libcurl handles: a second timeout, then successes
SELECT 'ST2_RESULT=' || result_status || '/' || result_code
	FROM alipayplus_cancel_payment(payment_request_id => '$ID_ST2');
\echo ST2_SQLSTATE=:SQLSTATE
RESET statement_timeout;
SELECT 'ST_AFTER=' || result_status || '/' || result_code || '/' || state
	FROM alipayplus_cancel_payment(payment_request_id => '$ID_ST_AFTER');
SELECT 'ST_AFTER_SLOW=' || result_status || '/' || result_code || '/' || state
	FROM alipayplus_cancel_payment(payment_request_id => '$ID_ST_AFTER_SLOW');
SQL
t1=$(now_ms)
sed 's/^/#   /' "$TMP/st.out"
# the call gives up on its own 250 ms before the statement would be
# cancelled: the statement succeeds with U local.timeout, and the attempt is
# recorded (the cancel path itself is tested with pg_cancel_backend below)
expect "statement_timeout: the statement succeeds" 00000 "$(line_value "$TMP/st.out" ST_SQLSTATE)"
expect "statement_timeout: the call ends as U local.timeout" "ST_RESULT=U/local.timeout" \
	"$(grep '^ST_RESULT=' "$TMP/st.out")"
el=$(line_value "$TMP/st.out" ST_ELAPSED_MS)
if [[ "$el" =~ ^[0-9]+$ ]] && [ "$el" -ge 600 ] && [ "$el" -lt 1000 ]; then
	ok "statement_timeout: the call ended after ${el} ms, before the 1 s statement_timeout (gateway answers after 30 s)"
else
	not_ok "statement_timeout: the call should end between 600 and 1000 ms, took '${el}' ms"
fi
if [ $((t1 - t0)) -lt 10000 ]; then
	ok "statement_timeout: whole session took $((t1 - t0)) ms (< 10 s)"
else
	not_ok "statement_timeout: whole session took $((t1 - t0)) ms (>= 10 s)"
fi
expect "statement_timeout: the ledger kept the cancellation" \
	"ST_LEDGER=1" "$(grep '^ST_LEDGER=' "$TMP/st.out")"
expect "statement_timeout: second slow call in the same session, U local.timeout" \
	"ST2_RESULT=U/local.timeout" "$(grep '^ST2_RESULT=' "$TMP/st.out")"
expect "statement_timeout: same session then cancels a payment" "ST_AFTER=S/SUCCESS/CANCELLED" \
	"$(grep '^ST_AFTER=' "$TMP/st.out")"
expect "statement_timeout: same session then waits out a 300 ms answer" \
	"ST_AFTER_SLOW=S/SUCCESS/CANCELLED" "$(grep '^ST_AFTER_SLOW=' "$TMP/st.out")"
expect "statement_timeout: both timed-out ids are CANCELLING with one local.timeout attempt each" \
	"2|2|CANCELLING" \
	"$(q "$DB" "SELECT (SELECT count(*) FROM alipayplus.cancellations WHERE payment_request_id IN ('$ID_ST', '$ID_ST2'))
		|| '|' || (SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id IN ('$ID_ST', '$ID_ST2') AND result_code = 'local.timeout')
		|| '|' || (SELECT string_agg(DISTINCT state, ',') FROM alipayplus.cancellations WHERE payment_request_id IN ('$ID_ST', '$ID_ST2'))")"
n=$(gateway_requests "$ID_ST")
if [ "$n" -ge 1 ]; then
	ok "statement_timeout: the request had reached the gateway ($n logged)"
else
	not_ok "statement_timeout: the gateway never saw $ID_ST (the call did not really wait on it)"
fi

# ---------------------------------------------------------------------------
echo "# 2. pg_cancel_backend() from another session, then the same session again"
cat >"$TMP/cb.sql" <<SQL
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\pset format unaligned
\pset tuples_only on
SET alipayplus.timeout_ms = 60000;
SELECT result_status FROM alipayplus_cancel_payment(payment_request_id => '$ID_CB');
\echo CB_SQLSTATE=:SQLSTATE
\echo CB_MESSAGE=:LAST_ERROR_MESSAGE
SELECT 'CB_AFTER=' || result_status || '/' || result_code || '/' || state
	FROM alipayplus_cancel_payment(payment_request_id => '$ID_CB_AFTER');
SELECT 'CB_AFTER_SLOW=' || result_status || '/' || result_code || '/' || state
	FROM alipayplus_cancel_payment(payment_request_id => '$ID_CB_AFTER_SLOW');
SQL
cancel_waiting pg_cancel_backend "$ID_CB" "$TMP/cb.sql" "$TMP/cb.out"
expect "pg_cancel_backend: SQLSTATE" 57014 "$(line_value "$TMP/cb.out" CB_SQLSTATE)"
expect "pg_cancel_backend: message" "canceling statement due to user request" \
	"$(line_value "$TMP/cb.out" CB_MESSAGE)"
expect "pg_cancel_backend: same session then cancels a payment" "CB_AFTER=S/SUCCESS/CANCELLED" \
	"$(grep '^CB_AFTER=' "$TMP/cb.out")"
expect "pg_cancel_backend: same session then waits out a 300 ms answer" \
	"CB_AFTER_SLOW=S/SUCCESS/CANCELLED" "$(grep '^CB_AFTER_SLOW=' "$TMP/cb.out")"
expect "pg_cancel_backend: no ledger row or attempt for the cancelled id" "0|0" \
	"$(q "$DB" "SELECT (SELECT count(*) FROM alipayplus.cancellations WHERE payment_request_id = '$ID_CB')
		|| '|' || (SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id = '$ID_CB')")"

# ---------------------------------------------------------------------------
echo "# 3. pg_terminate_backend() during a slow call"
psql_session >"$TMP/term.out" 2>&1 <<SQL &
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\pset format unaligned
\pset tuples_only on
SET alipayplus.timeout_ms = 60000;
SELECT result_status FROM alipayplus_cancel_payment(payment_request_id => '$ID_TERM');
\echo TERM_STILL_CONNECTED
SQL
bg=$!
BG_PIDS+=("$bg")
row=$(backend_waiting "$ID_TERM")
pid=${row%%|*}
expect "pg_terminate_backend: the waiting call reports wait_event_type/wait_event" \
	"Extension|Extension" "${row#*|}"
t0=$(now_ms)
if [[ "$pid" =~ ^[0-9]+$ ]]; then
	expect "pg_terminate_backend: signal sent" t "$(q "$DB" "SELECT pg_terminate_backend($pid)")"
else
	not_ok "pg_terminate_backend: no backend found running $ID_TERM"
	pid=0
fi
if wait_exit "$bg" 10; then
	ok "pg_terminate_backend: the client saw the end $(($(now_ms) - t0)) ms after the signal (< 10 s)"
else
	not_ok "pg_terminate_backend: the session still runs 10 s after the signal"
	kill "$bg" 2>/dev/null
fi
wait "$bg"
rc=$?
sed 's/^/#   /' "$TMP/term.out"
expect "pg_terminate_backend: psql lost its connection (exit status 2)" 2 "$rc"
if grep -q "FATAL:  57P01: terminating connection due to administrator command" "$TMP/term.out"; then
	ok "pg_terminate_backend: FATAL 57P01 terminating connection due to administrator command"
else
	not_ok "pg_terminate_backend: no 'FATAL:  57P01: terminating connection due to administrator command' in the client output"
fi
if grep -q TERM_STILL_CONNECTED "$TMP/term.out"; then
	not_ok "pg_terminate_backend: the session went on after the terminate"
else
	ok "pg_terminate_backend: the session ended"
fi
gone=f
deadline=$(($(now_ms) + 5000))
while [ "$(now_ms)" -lt $deadline ]; do
	if [ "$(q "$DB" "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid")" = 0 ]; then
		gone=t
		break
	fi
	sleep 0.05
done
expect "pg_terminate_backend: backend $pid gone from pg_stat_activity within 5 s" t "$gone"
expect "pg_terminate_backend: no ledger row or attempt for the id" "0|0" \
	"$(q "$DB" "SELECT (SELECT count(*) FROM alipayplus.cancellations WHERE payment_request_id = '$ID_TERM')
		|| '|' || (SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id = '$ID_TERM')")"
# ---------------------------------------------------------------------------
echo "# 4. pg_cancel_backend() during an inquiry, then the same session again"
cat >"$TMP/iq.sql" <<SQL
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\pset format unaligned
\pset tuples_only on
SET alipayplus.timeout_ms = 60000;
SELECT result_status FROM alipayplus_inquire_payment(payment_request_id => '$ID_IQ');
\echo IQ_SQLSTATE=:SQLSTATE
\echo IQ_MESSAGE=:LAST_ERROR_MESSAGE
SELECT 'IQ_AFTER=' || result_status || '/' || payment_status || '/' || payment_code
	FROM alipayplus_inquire_payment(payment_request_id => '$ID_IQ_AFTER');
SQL
cancel_waiting "inquiry, pg_cancel_backend" "$ID_IQ" "$TMP/iq.sql" "$TMP/iq.out"
expect "inquiry, pg_cancel_backend: SQLSTATE" 57014 "$(line_value "$TMP/iq.out" IQ_SQLSTATE)"
expect "inquiry, pg_cancel_backend: same session then learns a payment was paid" \
	"IQ_AFTER=S/S/SUCCESS" "$(grep '^IQ_AFTER=' "$TMP/iq.out")"
expect "inquiry, pg_cancel_backend: no inquiry recorded for the cancelled call, one for the next" "0|1" \
	"$(q "$DB" "SELECT (SELECT count(*) FROM alipayplus.inquiries WHERE sent_id = '$ID_IQ')
		|| '|' || (SELECT count(*) FROM alipayplus.inquiries WHERE sent_id = '$ID_IQ_AFTER')")"

expect "after all that, a fresh session still cancels" "S|CANCELLED" \
	"$(q "$DB" "SELECT result_status || '|' || state FROM alipayplus_cancel_payment(payment_request_id => 'fresh-$TAG')")"

finish
