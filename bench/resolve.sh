#!/usr/bin/env bash
# bench/resolve.sh [ORDERS] [LATENCY_MS]: a DBA resolves a backlog of stale
# orders (issue 15) against a gateway LATENCY_MS away (default 2000 orders,
# 100 ms): one statement queues them (alipayplus_request_resolve_stale), one
# CALL works the queue (alipayplus_resolve_backlog, progress NOTICEs shown).
# A tenth of the payments are paid, a tenth failed, the rest in process
# until cancelled; every inquiry and cancel goes through the claim-then-call
# pipeline with alipayplus.max_concurrency (64 here) calls in flight.
# Checks the outcome (no paid order cancelled, every failed one failed,
# every other one cancelled) and times both statements; the figures go to
# $RIG/bench/resolve.txt.  Inquiry every 1 s for 5 s (the guide's 3 s x 60 s
# would only add waiting).  Sets up the rig itself.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

N=${1:-2000}
LAT=${2:-100}
rig_up
OUT=$RIG/bench
mkdir -p "$OUT"
TAG=$RANDOM$RANDOM
DB=bench_resolve

say "setting up $N stale orders (a tenth paid, a tenth failed, the rest in process), the gateway $LAT ms away"
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql_rig -q -d $DB <<SQL
CREATE EXTENSION alipayplus_cancel;
CREATE TABLE shop_orders (id int PRIMARY KEY, req text UNIQUE NOT NULL,
	status text NOT NULL DEFAULT 'PENDING', created timestamptz NOT NULL);
SELECT alipayplus_bind_orders('shop_orders', 'req', 'status', 'CANCELLED', 'CANCELLING',
	initiated_at_column => 'created', paid_value => 'PAID', failed_value => 'FAILED',
	pending_values => ARRAY['PENDING']) \g /dev/null
INSERT INTO shop_orders (id, req, created)
SELECT i, 'lat-$LAT-' || CASE WHEN i % 10 = 0 THEN 'paid' WHEN i % 10 = 1 THEN 'failed-USER_BALANCE_NOT_ENOUGH'
							 ELSE 'inprocess' END || '-bench-$TAG-' || i,
	now() - interval '1 hour'
FROM generate_series(1, $N) i;
SQL

say "one statement queues them"
t0=$(date +%s.%N)
psql_rig -q -d $DB -c "SELECT outcome, count(*) FROM alipayplus_request_resolve_stale('30 minutes',
	inquiry_interval => '1 s', inquiry_total => '5 s') GROUP BY outcome"
t1=$(date +%s.%N)

say "one CALL works the queue"
psql_rig -q -d $DB -c "SET alipayplus.max_concurrency = 64" \
	-c "CALL alipayplus_resolve_backlog(time_budget => '30 minutes', progress => '2 s')" 2>&1 | sed 's/^/  /'
t2=$(date +%s.%N)

say "the outcome"
res=$(psql_rig -qAt -d $DB -F ' ' <<SQL
SELECT
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-paid-%'),
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-paid-%' AND o.status = 'PAID'),
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-paid-%' AND c.cancellation_id IS NOT NULL),
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-failed-%'),
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-failed-%' AND o.status = 'FAILED'),
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-inprocess-%'),
	count(*) FILTER (WHERE o.req LIKE 'lat-$LAT-inprocess-%' AND o.status = 'CANCELLED' AND c.state = 'CANCELLED'),
	(SELECT count(*) FROM alipayplus.inquiries),
	(SELECT count(*) FROM alipayplus.cancel_attempts),
	(SELECT count(*) FROM alipayplus.resolutions WHERE state = 'RESOLVING')
FROM shop_orders o LEFT JOIN alipayplus.cancellations c ON c.sent_id = o.req
SQL
)
read -r paid paid_ok paid_cancelled failed failed_ok inproc inproc_ok inquiries attempts unknown <<<"$res"
# the gateway's log: "api" comes before "id" on each line
paid_cancel_calls=$(grep -c "\"api\": \"cancelPayment\", \"id\": \"lat-$LAT-paid-bench-$TAG-" "$RIG/gateway.jsonl" || true)
inproc_cancel_calls=$(grep -c "\"api\": \"cancelPayment\", \"id\": \"lat-$LAT-inprocess-bench-$TAG-" "$RIG/gateway.jsonl" || true)
queue_s=$(echo "$t1 - $t0" | bc)
work_s=$(echo "$t2 - $t1" | bc)
{
	echo "orders: $N, gateway $LAT ms away, alipayplus.max_concurrency 64, inquiry every 1 s for 5 s"
	echo "queue (alipayplus_request_resolve_stale): $queue_s s"
	echo "work (CALL alipayplus_resolve_backlog): $work_s s; $inquiries inquiries, $attempts cancel attempts"
	echo "paid: $paid_ok of $paid made paid, $paid_cancelled cancellations requested, $paid_cancel_calls cancelPayment calls"
	echo "failed: $failed_ok of $failed made failed"
	echo "in process: $inproc_ok of $inproc cancelled (Alipay+ confirmed; $inproc_cancel_calls cancelPayment calls)"
	echo "still unknown: $unknown"
} | tee "$OUT/resolve.txt"
fail=0
[ "$paid_ok" = "$paid" ] && [ "$paid_cancelled" = 0 ] && [ "$paid_cancel_calls" = 0 ] || fail=1
[ "$failed_ok" = "$failed" ] && [ "$inproc_ok" = "$inproc" ] && [ "$unknown" = 0 ] || fail=1
# the log pattern finds what it looks for
[ "$inproc_cancel_calls" -ge "$inproc" ] || fail=1
if [ $fail = 0 ]; then
	echo "ok - every order as its answers say; no paid one cancelled"
else
	echo "not ok - the outcome is not as the answers say"
	exit 1
fi
