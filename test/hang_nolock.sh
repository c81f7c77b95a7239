#!/usr/bin/env bash
# test/hang_nolock.sh: a call to a gateway that hangs holds nothing the
# application waits on (issue 14, item 4).
#
# The committing processor (CALL alipayplus_run_cancellations) calls the
# gateway for a bound order whose answer never comes in time (the fake
# gateway sleeps 60 s on "slow-60000-..."; alipayplus.timeout_ms = 8000).
# While that call is in flight:
#   - an application UPDATE of another column of that order returns within
#     100 ms, measured with clock_timestamp() inside its own session (with
#     lock_timeout = 3s, a lock held by the processor would make it wait
#     and fail);
#   - alipayplus_apply_payment_result() for that order returns without
#     waiting (the same lock_timeout, well within 1 s);
#   - pg_stat_activity shows no session whose lock wait the processor's
#     backend blocks, sampled while the UPDATE runs;
#   - the processor's backend holds back no VACUUM horizon: backend_xmin
#     and backend_xid are NULL, every sample during the hang;
#   - it holds no lock on a relation, a row or a transaction id, and the
#     attempt is on record, committed, "no answer yet", before the answer;
#   - the call is still in flight after all of this (the checks happened
#     during the hang).
# Afterwards the call ends (local.timeout: the gateway really did not
# answer in time), the application's change is kept, and the gateway's
# requests for the id equal the attempts on record.
#
# Run as root from the repository, with the rig up:  bash test/hang_nolock.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_hang
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_hang.XXXXXX)
ID="slow-60000-hang-$TAG"

scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || { not_ok "set up"; finish; }
CREATE SCHEMA shop;
CREATE TABLE shop.orders (
	order_no bigint PRIMARY KEY,
	payment_request_id text NOT NULL UNIQUE,
	status text NOT NULL DEFAULT 'PENDING',
	note text);
SELECT alipayplus_bind_orders('shop.orders', 'payment_request_id', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	paid_value => 'PAID', failed_value => 'FAILED');
INSERT INTO shop.orders (order_no, payment_request_id) VALUES (1, '$ID');
SELECT alipayplus_request_cancel(payment_request_id => '$ID');
SQL

# the processor, in the background
$PGBIN/psql -X -q -d "$DB" >"$TMP/call.out" 2>&1 <<SQL &
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SET alipayplus.timeout_ms = 8000;
CALL alipayplus_run_cancellations(10, '1 min') /* hang-call-$TAG */;
\echo SQLSTATE=:SQLSTATE
SQL
bg=$!
BG_PIDS+=($bg)

# its backend, once the request has reached the gateway
deadline=$(($(now_ms) + 20000))
pid=""
while [ "$(now_ms)" -lt $deadline ]; do
	pid=$(q "$DB" "SELECT pid FROM pg_stat_activity WHERE query LIKE '%/* hang-call-$TAG */%'
		AND pid <> pg_backend_pid() LIMIT 1")
	[ -n "$pid" ] && [ "$(gateway_requests "$ID")" -ge 1 ] && break
	sleep 0.02
done
if ! [[ "$pid" =~ ^[0-9]+$ ]] || [ "$(gateway_requests "$ID")" -lt 1 ]; then
	not_ok "the processor's call did not reach the gateway within 20 s"
	sed 's/^/#   /' "$TMP/call.out"
	finish
fi
ok "the processor's call is in flight (backend $pid)"
expect "the attempt is on record, committed, before any answer: no answer yet" \
	"local.no_answer_yet|t" \
	"$(q "$DB" "SELECT result_code, completed_at IS NULL FROM alipayplus.cancel_attempts WHERE sent_id = '$ID'")"
expect "the processor's backend holds no lock on a relation, a row or a transaction id" "0" \
	"$(q "$DB" "SELECT count(*) FROM pg_locks WHERE pid = $pid AND locktype IN ('relation', 'tuple', 'transactionid')")"

# xmin_sample: "xmin|xid" of the processor's backend, 'NULL' for none
xmin_sample() {
	q "$DB" "SELECT coalesce(backend_xmin::text, 'NULL') || '|' || coalesce(backend_xid::text, 'NULL')
		FROM pg_stat_activity WHERE pid = $pid"
}

samples=("$(xmin_sample)")

# timed OUT SQL: SQL run with lock_timeout = 3s (a lock wait fails), timed
# with clock_timestamp() inside its session; OUT gets SQLSTATE= and MS=
timed() {
	$PGBIN/psql -X -q -d "$DB" >"$1" 2>&1 <<SQL
\set ON_ERROR_STOP 0
SET lock_timeout = '3s';
DO \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
	$2;
	PERFORM set_config('audit.ms', round(extract(epoch FROM clock_timestamp() - t0)::numeric * 1000, 1)::text, false);
END \$\$;
\echo SQLSTATE=:SQLSTATE
SELECT 'MS=' || current_setting('audit.ms', true) AS e \gset
\echo :e
SQL
}

# the application's UPDATE of another column, in the background
timed "$TMP/update.out" "UPDATE shop.orders SET note = 'touched while the call hangs' WHERE payment_request_id = '$ID'" &
upd=$!
BG_PIDS+=($upd)
# while it runs (or waits): does anyone wait on the processor's backend?
blocked=0
for i in 1 2 3 4 5; do
	b=$(q "$DB" "SELECT count(*) FROM pg_stat_activity
		WHERE $pid = ANY (pg_catalog.pg_blocking_pids(pid))")
	[ "$b" = 0 ] || blocked=$((blocked + b))
	samples+=("$(xmin_sample)")
	sleep 0.1
done
wait_exit "$upd" 10 || not_ok "the application's UPDATE still runs 10 s later"
sed 's/^/#   update: /' "$TMP/update.out"
expect "pg_stat_activity: no session waits on the processor's backend while the UPDATE runs" 0 "$blocked"
expect "the application's UPDATE of another column succeeds" 00000 "$(line_value "$TMP/update.out" SQLSTATE)"
ms=$(line_value "$TMP/update.out" MS)
if [[ "$ms" =~ ^[0-9]+(\.[0-9]+)?$ ]] && [ "${ms%.*}" -lt 100 ]; then
	ok "the application's UPDATE returned in $ms ms (< 100 ms)"
else
	not_ok "the application's UPDATE took '$ms' ms (bound 100 ms)"
fi

# the payment's result, applied while the call hangs
timed "$TMP/apply.out" "PERFORM alipayplus_apply_payment_result('$ID', 'U', 'UNKNOWN_EXCEPTION')"
sed 's/^/#   apply: /' "$TMP/apply.out"
expect "alipayplus_apply_payment_result() for the order succeeds" 00000 "$(line_value "$TMP/apply.out" SQLSTATE)"
ms=$(line_value "$TMP/apply.out" MS)
if [[ "$ms" =~ ^[0-9]+(\.[0-9]+)?$ ]] && [ "${ms%.*}" -lt 1000 ]; then
	ok "alipayplus_apply_payment_result() did not wait on the processor ($ms ms)"
else
	not_ok "alipayplus_apply_payment_result() took '$ms' ms (it should not wait on the processor)"
fi
samples+=("$(xmin_sample)")

held=""
for s in "${samples[@]}"; do
	[ "$s" = "NULL|NULL" ] || held="$held $s"
done
expect "the processor's backend holds no xmin and no xid during the hang (${#samples[@]} samples; VACUUM's horizon is not held)" "" "$held"

# all of the above happened while the call was in flight
if kill -0 "$bg" 2>/dev/null && [ "$(gateway_requests "$ID")" = 1 ]; then
	ok "the call was still in flight after the checks"
else
	not_ok "the call was no longer in flight when the checks ended: they prove nothing"
fi

wait_exit "$bg" 30 || not_ok "the processor's CALL still runs 30 s later"
sed 's/^/#   call: /' "$TMP/call.out"
expect "after the hang: the application's change is kept" "touched while the call hangs" \
	"$(q "$DB" "SELECT note FROM shop.orders WHERE payment_request_id = '$ID'")"
expect "after the hang: the call is on record as the gateway's timeout (local.timeout), one per request" \
	"$(gateway_requests "$ID")|$(gateway_requests "$ID")" \
	"$(q "$DB" "SELECT count(*) || '|' || count(*) FILTER (WHERE result_code = 'local.timeout')
		FROM alipayplus.cancel_attempts WHERE sent_id = '$ID'")"

finish
