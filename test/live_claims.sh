#!/usr/bin/env bash
# test/live_claims.sh: a processor run's claims are its own while it works
# (found in review of issue 16):
#   1. a settle slower than the lease (an order owner's 11.5 s trigger,
#      alipayplus.timeout_ms 500, so a lease of 10.5 s): a second processor
#      that runs meanwhile does not reap the first run's call in flight as
#      crashed nor send it again; the first run records the gateway's S
#      (before: U local.crashed "the claim expired", the S dropped in
#      silence, a second request);
#   2. alipayplus_requeue_cancellation of a row whose call is in flight is
#      refused (55006), and the call is recorded once, as answered;
#   3. continue_run may name only a finished run of the calling session:
#      another session's run, working, is refused (42501), an unknown one
#      22023, and the other run's calls are untouched;
#   4. a processor that works in one transaction (the SELECT form) judges
#      runs that began after it as working (found in review: it read
#      pg_stat_activity as of its first look, took them for ended, reaped
#      their calls and a third processor sent them again);
#   5. a run in a session with track_activities off is working too (found
#      in review: taken for ended at once);
#   6. a role holding advisory locks on every key does not hold a run up,
#      and an order owner's trigger that calls pg_advisory_unlock_all()
#      while the run applies its answer does not make it look ended (found
#      in review of an advisory-lock design: runs waited for ever on a
#      squatter's lock, and a second processor reaped the live run).
#
# Run as root from the repository, with the rig up:  bash test/live_claims.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_live
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_live.XXXXXX)
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || { not_ok "set up"; finish; }
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION slow_trigger() RETURNS trigger LANGUAGE plpgsql AS
\$\$ BEGIN
	IF NEW.st = 'CANCELLED' AND NEW.req LIKE 'lc-a-%' THEN PERFORM pg_sleep(11.5); END IF;
	IF NEW.st = 'CANCELLED' AND NEW.req LIKE 'lc-unlock-%' THEN PERFORM pg_advisory_unlock_all(); END IF;
	RETURN NEW;
END \$\$;
CREATE TRIGGER slow BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION slow_trigger();
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders VALUES ('lc-a-$TAG'), ('slow-200-lc-b-$TAG');
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req);
DROP ROLE IF EXISTS apc_live_ops;
CREATE ROLE apc_live_ops LOGIN;
GRANT EXECUTE ON FUNCTION alipayplus_process_cancellations(integer, interval, bigint) TO apc_live_ops;
SQL

# 1. run A: a is answered at once and applied for 11.5 s; b is answered
#    after 0.2 s, its answer waiting while a is applied
$PGBIN/psql -X -q -d "$DB" >"$TMP/a.out" 2>&1 <<SQL &
SET alipayplus.timeout_ms = 500;
SET alipayplus.max_concurrency = 2;
CALL alipayplus_run_cancellations(2, '5 min') /* live-a-$TAG */;
\echo SQLSTATE=:SQLSTATE
SQL
bg=$!
BG_PIDS+=($bg)
# wait for A's calls to reach the gateway, then past the 10.5 s lease
deadline=$(($(now_ms) + 20000))
while [ "$(now_ms)" -lt $deadline ] && [ "$(gateway_requests "slow-200-lc-b-$TAG")" -lt 1 ]; do
	sleep 0.05
done
sleep 10.8
run_a=$(q $DB "SELECT run_id FROM alipayplus.processor_runs WHERE finished_at IS NULL ORDER BY run_id LIMIT 1")

# 2. meanwhile: requeue of b, whose call is A's, is refused
$PGBIN/psql -X -q -d "$DB" >"$TMP/rq.out" 2>&1 <<SQL
SELECT alipayplus_requeue_cancellation(cancellation_id) FROM alipayplus.cancellations WHERE sent_id = 'slow-200-lc-b-$TAG';
\echo SQLSTATE=:SQLSTATE
SQL
sed 's/^/#   requeue: /' "$TMP/rq.out"
expect "requeue of a row whose call is in flight is refused (55006)" 55006 "$(line_value "$TMP/rq.out" SQLSTATE)"

# 3. continue_run of A's run by another role, and of no run
$PGBIN/psql -X -q -U apc_live_ops -d "$DB" >"$TMP/cr.out" 2>&1 <<SQL
SELECT claimed FROM alipayplus_process_cancellations(10, '5 s', continue_run => $run_a);
\echo SQLSTATE=:SQLSTATE
SQL
sed 's/^/#   continue_run: /' "$TMP/cr.out"
expect "continue_run of another session's run is refused (42501)" 42501 "$(line_value "$TMP/cr.out" SQLSTATE)"
$PGBIN/psql -X -q -U apc_live_ops -d "$DB" >"$TMP/cr2.out" 2>&1 <<SQL
SELECT claimed FROM alipayplus_process_cancellations(10, '5 s', continue_run => 999999);
\echo SQLSTATE=:SQLSTATE
SQL
expect "continue_run of no run is refused (22023)" 22023 "$(line_value "$TMP/cr2.out" SQLSTATE)"
expect "A's run is still working after both" "running|" \
	"$(q $DB "SELECT stopped_because || '|' || coalesce(finished_at::text, '') FROM alipayplus.processor_runs WHERE run_id = $run_a")"

# and a second processor, past A's lease, while A still applies a
$PGBIN/psql -X -q -d "$DB" >"$TMP/b.out" 2>&1 <<SQL
CALL alipayplus_run_cancellations(10, '3 s');
\echo SQLSTATE=:SQLSTATE
SQL
sed 's/^/#   second processor: /' "$TMP/b.out"
expect "the second processor sends nothing for b" 1 "$(gateway_requests "slow-200-lc-b-$TAG")"
wait_exit "$bg" 30 || not_ok "run A still runs 30 s later"
sed 's/^/#   run A: /' "$TMP/a.out"
expect "run A succeeds" 00000 "$(line_value "$TMP/a.out" SQLSTATE)"
expect "b's answer is recorded as the gateway's S, by run A, once; nothing crashed" \
	"1|S SUCCESS|$run_a|0" \
	"$(q $DB "SELECT count(*) || '|' || max(result_status || ' ' || result_code) || '|' || max(run_id) || '|' ||
		(SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code = 'local.crashed')
		FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-200-lc-b-$TAG'")"
expect "both ledger rows and orders CANCELLED" "2|2" \
	"$(q $DB "SELECT (SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED') || '|' ||
		(SELECT count(*) FROM orders WHERE st = 'CANCELLED')")"

# 4. B works in one transaction (max_concurrency 1, a 2 s call); A begins
#    0.5 s later and calls x (4 s); after B, C runs while x is in flight
q $DB "SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'slow-2000-lc-b1-$TAG')" >/dev/null
$PGBIN/psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL &
SET alipayplus.max_concurrency = 1;
SELECT run_id FROM alipayplus_process_cancellations(10, '20 s');
SQL
bgb=$!
BG_PIDS+=($bgb)
sleep 0.3
q $DB "SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'slow-4000-lc-x-$TAG')" >/dev/null
sleep 0.2
$PGBIN/psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL &
CALL alipayplus_run_cancellations(1, '1 min');
SQL
bga=$!
BG_PIDS+=($bga)
wait_exit "$bgb" 20 || not_ok "B still runs"
sleep 0.5
q $DB "CALL alipayplus_run_cancellations(10, '10 s')" >/dev/null 2>&1
wait_exit "$bga" 20 || not_ok "A still runs"
expect "a run begun after a one-transaction processor: x sent once, recorded S, nothing crashed" \
	"1|S SUCCESS|0" \
	"$(gateway_requests "slow-4000-lc-x-$TAG")|$(q $DB "SELECT string_agg(result_status || ' ' || result_code, ',') FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-4000-lc-x-$TAG'")|$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code = 'local.crashed'")"

# 5. A with track_activities off; B runs while A's call is in flight
q $DB "SELECT count(*) FROM alipayplus_request_cancel(payment_request_id => 'slow-3000-lc-ta-$TAG')" >/dev/null
$PGBIN/psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL &
SET track_activities = off;
CALL alipayplus_run_cancellations(1, '1 min');
SQL
bga=$!
BG_PIDS+=($bga)
deadline=$(($(now_ms) + 10000))
while [ "$(now_ms)" -lt $deadline ] && [ "$(gateway_requests "slow-3000-lc-ta-$TAG")" -lt 1 ]; do
	sleep 0.05
done
q $DB "CALL alipayplus_run_cancellations(10, '5 s')" >/dev/null 2>&1
wait_exit "$bga" 20 || not_ok "A still runs"
expect "a run with track_activities off: sent once, recorded S, nothing crashed" \
	"1|S SUCCESS|0" \
	"$(gateway_requests "slow-3000-lc-ta-$TAG")|$(q $DB "SELECT string_agg(result_status || ' ' || result_code, ',') FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-3000-lc-ta-$TAG'")|$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code = 'local.crashed'")"

# 6. a squatter on advisory keys, and an owner's trigger that lets go of
#    every advisory lock while run A has another call in flight
$PGBIN/psql -X -q -d "$DB" >/dev/null 2>&1 <<'SQL' &
SELECT count(pg_advisory_lock(1095783250, g)) FROM generate_series(1, 200) g;
SELECT count(pg_advisory_lock(g::bigint)) FROM generate_series(1, 200) g;
SELECT pg_sleep(12);
SQL
BG_PIDS+=($!)
sleep 0.5
$PGBIN/psql -X -q -d "$DB" -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO orders VALUES ('lc-unlock-1-$TAG'), ('slow-3000-lc-c-$TAG');
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req)
	WHERE req IN ('lc-unlock-1-$TAG', 'slow-3000-lc-c-$TAG');
SQL
t0=$(now_ms)
$PGBIN/psql -X -q -d "$DB" >"$TMP/a6.out" 2>&1 <<SQL &
SET alipayplus.max_concurrency = 2;
CALL alipayplus_run_cancellations(2, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
bga=$!
BG_PIDS+=($bga)
sleep 1.5
q $DB "CALL alipayplus_run_cancellations(10, '3 s')" >/dev/null 2>&1
wait_exit "$bga" 20 || not_ok "A still runs"
el=$(($(now_ms) - t0))
expect "beside a squatter on advisory keys, run A ends on its own" 00000 "$(line_value "$TMP/a6.out" SQLSTATE)"
if [ "$el" -lt 10000 ]; then ok "run A was not held up (${el} ms)"; else not_ok "run A took ${el} ms"; fi
expect "pg_advisory_unlock_all() in a trigger: c sent once, recorded S by A, nothing crashed" \
	"1|S SUCCESS|0" \
	"$(gateway_requests "slow-3000-lc-c-$TAG")|$(q $DB "SELECT string_agg(result_status || ' ' || result_code, ',') FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-3000-lc-c-$TAG'")|$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code = 'local.crashed'")"

# continue_run of the session's own finished run is still accepted
$PGBIN/psql -X -q -d "$DB" >"$TMP/own.out" 2>&1 <<SQL
SELECT run_id AS r FROM alipayplus_process_cancellations(1, '2 s') \\gset
SELECT 'OWN=' || (run_id = :r) AS e FROM alipayplus_process_cancellations(1, '2 s', continue_run => :r) \\gset
\\echo :e
SQL
expect "continue_run of the session's own finished run adds to it" "true" "$(line_value "$TMP/own.out" OWN)"
rm -rf "$TMP"
finish
