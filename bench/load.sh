#!/usr/bin/env bash
# bench/load.sh [SECONDS] [CLIENTS]: load with faults.  Sets up the rig
# (scripts/lib.sh, honouring the ALIPAYPLUS_* overrides) with the fake
# gateway in chaos mode: a random 20 % of the calls stall past
# alipayplus.timeout_ms or fail (TCP reset, HTTP 500, HTTP 503 with a signed
# S body, a signed U, an unsigned S, a bad signature) and the rest answer S
# (F PROCESS_FAIL one time in 20).  Then CLIENTS clients (default 8)
# work for SECONDS (default 60) the way users do: a quarter of them (at
# least one) are processors, each a session that runs
# CALL alipayplus_run_cancellations(50, '5 s') again and again (its ZA004
# "did not answer any" error, raised after committing when a run got no
# answer at all, is counted, not a failure: that is how it tells pg_cron);
# the others are pgbench clients, two thirds of their transactions
# application code that takes an order in a bound order table and requests
# its cancellation (alipayplus_request_cancel), one third direct
# alipayplus_cancel_payment calls, at LOAD_RATE transactions a second in
# all (default 100, about what two processors keep up with while a fifth of
# the calls fail; 0 = as fast as they go, and the queue grows).  Afterwards
# it checks and prints:
#
#   calls made      gateway requests and ledger attempts, matched on id and
#                   Request-Time (counted per pair: retries within a second
#                   share one): every attempt that was sent is in the
#                   gateway's log, and every request the gateway logged has
#                   its attempt, except that libcurl sends a request once
#                   more on a fresh connection when a kept-alive one is
#                   reset before any answer (counted apart)
#   outcomes        attempts by result status and code
#   crashes         no "terminated by signal", "was terminated", "exited
#                   with exit code", "all server processes terminated" in
#                   the server log; the postmaster's PID and start time
#                   unchanged; no client stopped by an error
#   rows stuck      ledger rows CANCELLING with no next_attempt_at and no
#                   needs_attention: nobody would ever touch them again
#   inconsistent    ledger rows that disagree with their attempts:
#                   attempt_count differs from the number of attempt rows;
#                   last_result_status/last_result_code differ from the
#                   latest attempt's (highest attempt_id); CANCELLED without
#                   a verified S attempt (result_status S and
#                   signature_verified); CANCELLING with an S attempt; the
#                   bound order's status not the ledger state's value
#                   (CANCELLED / CANCELLING); plus any S attempt anywhere
#                   that is not signature_verified
#
# and exits non-zero if any check fails.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DURATION=${1:-60}
CLIENTS=${2:-8}
FAULT_SHARE=0.2
STALL_MS=2000			# the stall of a stalled call, past the timeout below
TIMEOUT_MS=1000			# alipayplus.timeout_ms of the load database
RATE=${LOAD_RATE:-100}
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS] [CLIENTS]" >&2; exit 2; }
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS] [CLIENTS]" >&2; exit 2; }
[[ "$RATE" =~ ^[0-9]+$ ]] || { echo "LOAD_RATE must be a number" >&2; exit 2; }
rate_opt=()
[ "$RATE" = 0 ] || rate_opt=(-R "$RATE")
# pgbench comes with postgresql-15; rig_up installs what is missing
PACKAGES="$PACKAGES postgresql-15"

rig_up --chaos "$FAULT_SHARE" --chaos-stall-ms "$STALL_MS"
OUT=$RIG/load
mkdir -p "$OUT"
chown postgres:postgres "$OUT"

say "setting up the load database"
psql_rig -q -d postgres -c "CREATE DATABASE load"
psql_rig -q -d load <<SQL
CREATE EXTENSION alipayplus_cancel;
ALTER DATABASE load SET alipayplus.timeout_ms = $TIMEOUT_MS;
CREATE SCHEMA shop;
CREATE SEQUENCE shop.ids;
CREATE TABLE shop.orders (
	order_no bigint PRIMARY KEY DEFAULT nextval('shop.ids'),
	payment_request_id text NOT NULL UNIQUE,
	status text NOT NULL DEFAULT 'PENDING',
	created_at timestamptz NOT NULL DEFAULT now()
);
SELECT alipayplus_bind_orders('shop.orders', 'payment_request_id', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID', failed_value => 'FAILED');
-- the application: take an order (its own transaction), and hear nothing back
CREATE FUNCTION shop.take_order() RETURNS text LANGUAGE sql AS \$\$
	INSERT INTO shop.orders (payment_request_id)
	VALUES ('lo-' || nextval('shop.ids')) RETURNING payment_request_id
\$\$;
SQL

# the clients' scripts (pgbench -M extended: :id is a text parameter)
cat >"$OUT/app.sql" <<'SQL'
SELECT shop.take_order() AS id \gset
BEGIN;
SELECT state FROM alipayplus_request_cancel(payment_request_id => :id);
COMMIT;
SQL
cat >"$OUT/direct.sql" <<'SQL'
SELECT result_status FROM alipayplus_cancel_payment(payment_request_id => 'ld-' || nextval('shop.ids'));
SQL
chmod 0644 "$OUT"/*.sql

pm_pid_before=$(head -n 1 "$RIG/pgdata/postmaster.pid")
pm_start_before=$(psql_rig -At -d load -c "SELECT pg_postmaster_start_time()")
log_offset=$(stat -c %s "$RIG/postgres.log")
gw_offset=$(stat -c %s "$RIG/gateway.jsonl")

say "$CLIENTS clients for $DURATION s (processors: $(( CLIENTS / 4 < 1 ? 1 : CLIENTS / 4 )); rate ${RATE:-0}/s, 0 = unthrottled), $(awk -v p="$FAULT_SHARE" 'BEGIN { print p * 100 }') % of the calls stalled or failed"
# processor_loop N END: one processor session, CALLs until END (epoch s);
# writes "runs za004 other_errors" to $OUT/processor.N.counts
processor_loop() {
	local n=$1 end=$2 runs=0 za004=0 errors=0 out
	coproc PSQL { as_postgres $PGBIN/psql -X -q -h "$RIG" -p "$PGPORT_RIG" -U postgres -d load 2>&1; }
	while [ "$(date +%s)" -lt "$end" ]; do
		out=$(ask "CALL alipayplus_run_cancellations(50, '5 s');")
		runs=$((runs + 1))
		case "$out" in
			"") ;;
			*"did not answer any of the"*) za004=$((za004 + 1)) ;;
			*) errors=$((errors + 1)); echo "$out" >>"$OUT/processor.$n.errors" ;;
		esac
	done
	echo '\q' >&"${PSQL[1]}"
	echo "$runs $za004 $errors" >"$OUT/processor.$n.counts"
}
processors=$(( CLIENTS / 4 < 1 ? 1 : CLIENTS / 4 ))
app_clients=$(( CLIENTS - processors ))
[ "$app_clients" -ge 1 ] || { echo "at least 2 clients" >&2; exit 2; }
rm -f "$OUT"/processor.*
end=$(( $(date +%s) + DURATION ))
proc_pids=()
for n in $(seq 1 "$processors"); do
	processor_loop "$n" "$end" &
	proc_pids+=($!)
done
threads=$(( app_clients < 2 ? 1 : 2 ))
set +e
as_postgres $PGBIN/pgbench -h "$RIG" -p "$PGPORT_RIG" -U postgres -n -M extended \
	-c "$app_clients" -j "$threads" -T "$DURATION" "${rate_opt[@]}" \
	-f "$OUT/app.sql@2" -f "$OUT/direct.sql@1" \
	load >"$OUT/pgbench.out" 2>&1
pgbench_rc=$?
set -e
wait "${proc_pids[@]}"
read -r runs unanswered_runs proc_errors < <(cat "$OUT"/processor.*.counts |
	awk '{ r += $1; u += $2; e += $3 } END { print r + 0, u + 0, e + 0 }')
echo "processor runs: $runs ($unanswered_runs ended with ZA004, $proc_errors other errors)"
grep -E "^(number of (transactions|failed)|tps|latency average)|aborted|ERROR" "$OUT/pgbench.out" | head -n 20 || true

say "checks"
# the gateway's requests since the load began, into the database
tail -c +$((gw_offset + 1)) "$RIG/gateway.jsonl" >"$OUT/gateway.jsonl"
chmod 0644 "$OUT/gateway.jsonl"
psql_rig -q -d load -v ON_ERROR_STOP=1 -v gwlog="$OUT/gateway.jsonl" <<'SQL'
CREATE TABLE gw (j jsonb);
SELECT pg_read_file(:'gwlog') AS gwtext \gset
INSERT INTO gw SELECT l::jsonb FROM regexp_split_to_table(:'gwtext', E'\n') l WHERE l <> '';
SQL

q() { psql_rig -At -d load -c "$1"; }
gw_requests=$(q "SELECT count(*) FROM gw WHERE j->>'path' = '/aps/api/v1/payments/cancelPayment'")
attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts")
sent_attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code <> 'local.not_sent'")
# per (id, Request-Time): requests the gateway logged (and how many it
# reset) against attempts recorded
psql_rig -q -d load -c "CREATE TABLE matched AS
	SELECT id, rt, coalesce(g.n, 0) AS gw_n, coalesce(g.resets, 0) AS resets,
		   coalesce(a.n, 0) AS att_n
	FROM (SELECT j->>'id' AS id, j->>'request_time' AS rt, count(*) AS n,
				 count(*) FILTER (WHERE j->>'outcome' LIKE '%reset') AS resets
		  FROM gw GROUP BY 1, 2) g
	FULL JOIN (SELECT sent_id AS id, request_time AS rt, count(*) AS n
			   FROM alipayplus.cancel_attempts WHERE result_code <> 'local.not_sent'
			   GROUP BY 1, 2) a USING (id, rt)"
attempts_unseen=$(q "SELECT coalesce(sum(greatest(att_n - gw_n, 0)), 0) FROM matched")
resent=$(q "SELECT coalesce(sum(least(greatest(gw_n - att_n, 0), resets)), 0) FROM matched")
requests_unrecorded=$(q "SELECT coalesce(sum(greatest(gw_n - att_n, 0) - least(greatest(gw_n - att_n, 0), resets)), 0) FROM matched")
cancelled=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED'")
cancelling=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLING'")
attention=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE needs_attention")
due=$(q "SELECT count(*) FROM alipayplus.cancellations
	WHERE state = 'CANCELLING' AND NOT needs_attention AND next_attempt_at <= now()")
retried=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE attempt_count > 1")
orders=$(q "SELECT count(*) FROM shop.orders")

# crashes: the server log since the load began, and the postmaster
crash_lines=$(tail -c +$((log_offset + 1)) "$RIG/postgres.log" |
	grep -cE "terminated by signal|was terminated|exited with exit code|all server processes terminated|server process .* exited" || true)
pm_pid_after=$(head -n 1 "$RIG/pgdata/postmaster.pid")
pm_start_after=$(psql_rig -At -d load -c "SELECT pg_postmaster_start_time()")
postmaster_restarted=0
[ "$pm_pid_before" = "$pm_pid_after" ] && [ "$pm_start_before" = "$pm_start_after" ] || postmaster_restarted=1
aborted=$(( $(grep -c "aborted" "$OUT/pgbench.out" || true) + proc_errors ))

stuck=$(q "SELECT count(*) FROM alipayplus.cancellations
	WHERE state = 'CANCELLING' AND next_attempt_at IS NULL AND NOT needs_attention")
inconsistent=$(q "
WITH a AS (
	SELECT cancellation_id, count(*) AS n,
		   bool_or(result_status = 'S' AND signature_verified) AS verified_s,
		   bool_or(result_status = 'S') AS any_s,
		   (array_agg(result_status ORDER BY attempt_id DESC))[1] AS last_status,
		   (array_agg(result_code ORDER BY attempt_id DESC))[1] AS last_code
	FROM alipayplus.cancel_attempts GROUP BY cancellation_id)
SELECT count(*) FROM alipayplus.cancellations c
LEFT JOIN a USING (cancellation_id)
LEFT JOIN shop.orders o ON o.payment_request_id = c.sent_id
WHERE c.attempt_count <> coalesce(a.n, 0)
   OR c.last_result_status IS DISTINCT FROM a.last_status
   OR c.last_result_code IS DISTINCT FROM a.last_code
   OR (c.state = 'CANCELLED' AND NOT coalesce(a.verified_s, false))
   OR (c.state = 'CANCELLING' AND coalesce(a.any_s, false))
   OR (o.order_no IS NOT NULL AND o.status <> c.state)")
unverified_s=$(q "SELECT count(*) FROM alipayplus.cancel_attempts
	WHERE result_status = 'S' AND signature_verified IS NOT TRUE")
inconsistent=$((inconsistent + unverified_s))

echo
echo "outcomes of the attempts (ledger):"
psql_rig -d load -c "SELECT result_status, result_code, count(*) AS attempts
	FROM alipayplus.cancel_attempts GROUP BY 1, 2 ORDER BY 1, 3 DESC"
echo "what the gateway did:"
psql_rig -d load -c "SELECT regexp_replace(j->>'outcome', '^chaos:', 'fault: ') AS gateway_outcome, count(*) AS requests
	FROM gw GROUP BY 1 ORDER BY 2 DESC"
echo "by caller:"
psql_rig -d load -c "SELECT caller, count(*) AS attempts FROM alipayplus.cancel_attempts GROUP BY 1 ORDER BY 1"

failed=0
row() {	# name value ok(0/1) note
	local verdict=ok
	[ "$3" = 1 ] || { verdict=FAILED; failed=1; }
	printf '%-44s %10s   %-6s %s\n' "$1" "$2" "$verdict" "${4:-}"
}
eq0() { [ "$1" = 0 ] && echo 1 || echo 0; }
echo
printf '%-44s %10s   %-6s %s\n' "load with faults: ${DURATION} s, $CLIENTS clients" "value" "check" ""
printf '%s\n' "--------------------------------------------------------------------------------"
row "calls logged by the gateway" "$gw_requests" 1
row "attempts in the ledger" "$attempts" 1 "($sent_attempts sent)"
row "sent attempts the gateway never saw" "$attempts_unseen" "$(eq0 "$attempts_unseen")" "must be 0"
row "requests libcurl re-sent after a reset" "$resent" 1 "(same signed request, fresh connection)"
row "gateway requests with no attempt recorded" "$requests_unrecorded" "$(eq0 "$requests_unrecorded")" "must be 0"
row "orders taken" "$orders" 1
row "ledger rows CANCELLED / CANCELLING" "$cancelled / $cancelling" 1 "($attention need attention, $due due now)"
row "ledger rows that took more than one attempt" "$retried" 1
row "backends crashed (server log)" "$crash_lines" "$(eq0 "$crash_lines")" "must be 0"
row "postmaster restarted" "$postmaster_restarted" "$(eq0 "$postmaster_restarted")" "PID $pm_pid_after"
row "processor runs (ended with ZA004)" "$runs" 1 "($unanswered_runs)"
row "clients stopped by an error" "$aborted" "$(eq0 "$aborted")" "pgbench exit $pgbench_rc"
row "rows stuck" "$stuck" "$(eq0 "$stuck")" "must be 0"
row "ledger rows inconsistent with attempts" "$inconsistent" "$(eq0 "$inconsistent")" "must be 0 ($unverified_s unverified S)"
[ "$pgbench_rc" = 0 ] || { echo "pgbench exited with $pgbench_rc; see $OUT/pgbench.out" >&2; failed=1; }
[ "$gw_requests" -gt 0 ] || { echo "no calls were made" >&2; failed=1; }
echo
rig_stop
if [ "$failed" = 0 ]; then
	echo "load with faults: all checks passed"
else
	echo "load with faults: FAILED" >&2
	exit 1
fi
