#!/usr/bin/env bash
# test/pipeline_nolock.sh: while the processor's calls are in flight it
# holds no row lock, no snapshot and (CALL forms) no open transaction
# (issue 14 item 4, issue 16).
#
# An order is bound and its cancellation queued with an id the gateway
# answers after 6 s (slow-6000-...).  While CALL alipayplus_run_cancellations()
# waits on it: the backend's xmin is free (pg_stat_activity.backend_xmin
# NULL, so VACUUM's horizon is not held back), it holds no lock on a
# relation, an application UPDATE of another column of that order returns
# (lock_timeout 100 ms), and alipayplus_apply_payment_result() for it too;
# the attempt is on record, "no answer yet", before the answer comes; then
# the answer is settled: the order and the ledger row CANCELLED.  Needs the
# rig up.
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

DB=apc_nolock
TAG=$(date +%s%N)
ID="slow-6000-nl-$TAG"
TMP=$(mktemp -d /tmp/apc_nolock.XXXXXX)
BG_PIDS=()
cleanup() {
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

echo "# setting up database $DB"
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }
q "$DB" "CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL, note text)" >/dev/null
q "$DB" "SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING')" >/dev/null
q "$DB" "INSERT INTO orders VALUES ('$ID', 'PENDING', NULL)" >/dev/null
q "$DB" "SELECT alipayplus_request_cancel(payment_request_id => '$ID')" >/dev/null

PGOPTIONS="-c alipayplus.timeout_ms=20000" $PGBIN/psql -X -qAt -d "$DB" -c "CALL alipayplus_run_cancellations()" >"$TMP/call.out" 2>&1 &
bg=$!
BG_PIDS+=("$bg")

# the backend once its call waits on the gateway
pid=""
deadline=$(($(now_ms) + 15000))
while [ "$(now_ms)" -lt $deadline ]; do
	pid=$(q "$DB" "SELECT pid FROM pg_stat_activity WHERE query LIKE '%alipayplus_run_cancellations%'
		AND pid <> pg_backend_pid() AND wait_event_type = 'Extension' LIMIT 1")
	[ -n "$pid" ] && break
	sleep 0.05
done
if [ -z "$pid" ]; then
	not_ok "the processor never waited on the gateway"
	finish
fi
# and the request has reached the gateway
deadline=$(($(now_ms) + 5000))
while [ "$(now_ms)" -lt $deadline ] && ! grep -q "$ID" "$RIG/gateway.jsonl"; do
	sleep 0.05
done

expect "the attempt is on record before the answer: no answer yet, committed" \
	"local.no_answer_yet|t" \
	"$(q "$DB" "SELECT result_code, completed_at IS NULL FROM alipayplus.cancel_attempts WHERE sent_id = '$ID'")"
expect "while the call hangs the backend holds no snapshot (backend_xmin NULL)" "t" \
	"$(q "$DB" "SELECT backend_xmin IS NULL FROM pg_stat_activity WHERE pid = $pid")"
expect "and no open transaction (no xid, idle transaction state not required)" "t" \
	"$(q "$DB" "SELECT backend_xid IS NULL FROM pg_stat_activity WHERE pid = $pid")"
expect "and no lock on any relation or row" "0" \
	"$(q "$DB" "SELECT count(*) FROM pg_locks WHERE pid = $pid AND locktype IN ('relation', 'tuple', 'transactionid')")"
t0=$(now_ms)
if q "$DB" "SET lock_timeout = '100ms'; UPDATE orders SET note = 'changed by the application' WHERE req = '$ID'" >/dev/null 2>"$TMP/upd.err"; then
	ok "an application UPDATE of another column of the order returns ($(($(now_ms) - t0)) ms, lock_timeout 100 ms)"
else
	not_ok "the application UPDATE waited on the processor: $(cat "$TMP/upd.err")"
fi
if r=$(q "$DB" "SET lock_timeout = '100ms'; SELECT alipayplus_apply_payment_result('$ID', 'S')" 2>"$TMP/apr.err"); then
	ok "alipayplus_apply_payment_result() for it returns without waiting ($r)"
else
	not_ok "alipayplus_apply_payment_result() waited on the processor: $(cat "$TMP/apr.err")"
fi
expect "the call is still in flight" "t" \
	"$(q "$DB" "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event_type = 'Extension'")"

if wait_exit "$bg" 20; then
	ok "the CALL ended"
else
	not_ok "the CALL still runs 20 s later"
fi
expect "the answer settled: ledger and order CANCELLED, the application's change kept" \
	"CANCELLED|CANCELLED|changed by the application" \
	"$(q "$DB" "SELECT c.state, o.st, o.note FROM alipayplus.cancellations c JOIN orders o ON o.req = c.sent_id WHERE c.sent_id = '$ID'")"
expect "one request, one attempt, completed with the S" "1|SUCCESS|t" \
	"$(q "$DB" "SELECT count(*), max(result_code), bool_and(completed_at IS NOT NULL) FROM alipayplus.cancel_attempts WHERE sent_id = '$ID'")"

q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
finish
