#!/usr/bin/env bash
# scripts/demo.sh: set up the rig (scripts/lib.sh), then cancel payments
# through the fake Alipay+ gateway, the recommended way (the outbox, then the
# processor) and directly, and show an S, an F and a U outcome and the rows
# they leave.  The cluster and gateway keep running afterwards so that you
# can look around; scripts/stop.sh stops them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rig_up
# the demo leaves the rig running: let the next run of the rig take over
exec 9>&-

say "demo: where the settings live"
echo "The rig's postgresql.conf ($RIG/pgdata/postgresql.conf) points the extension at the fake gateway:"
rig_alipayplus_conf | sed 's/^/    /'

say "demo: a shop's orders table, bound to the cancellation ledger"
suffix=$(date +%s)
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS demo" -c "CREATE DATABASE demo"
psql_rig -d demo <<SQL
\set ECHO queries
CREATE EXTENSION alipayplus_cancel;
CREATE SCHEMA shop;
CREATE TABLE shop.orders (
	order_no int PRIMARY KEY,
	payment_request_id text UNIQUE NOT NULL,
	status text NOT NULL DEFAULT 'PENDING',
	created_at timestamptz NOT NULL DEFAULT now()
);
SELECT alipayplus_bind_orders('shop.orders', 'payment_request_id', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID');
INSERT INTO shop.orders (order_no, payment_request_id) VALUES
	(1, 'DEMO-$suffix-1'),
	(2, 'f-PROCESS_FAIL-$suffix-2'),
	(3, 'u-UNKNOWN_EXCEPTION-$suffix-3'),
	(4, 'DEMO-$suffix-4');

-- the fake gateway answers S for orders 1 and 4, F PROCESS_FAIL for order 2
-- and U UNKNOWN_EXCEPTION for order 3 (it picks the outcome from the id)

-- 1. the recommended path: the application queues the cancellations in its
--    own transaction (the outbox: no network call yet) ...
BEGIN;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'DEMO-$suffix-1');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'f-PROCESS_FAIL-$suffix-2');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'u-UNKNOWN_EXCEPTION-$suffix-3');
COMMIT;
SELECT order_no, status FROM shop.orders ORDER BY order_no;
-- ... and the processor, which pg_cron runs every minute, makes the calls,
--    committing after each one
CALL alipayplus_run_cancellations();
SELECT run_id, claimed, cancelled, retrying, attention, unanswered, stopped_because
FROM alipayplus.processor_runs;

-- 2. the direct call, for a DBA: call now, in this transaction
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'DEMO-$suffix-4');

-- the orders: S cancelled orders 1 and 4; orders 2 and 3 can now only become CANCELLED
SELECT order_no, payment_request_id, status FROM shop.orders ORDER BY order_no;
-- the ledger: one row per payment whose cancellation was requested
SELECT sent_id, state, attempt_count, last_result_status AS st,
	last_result_code, needs_attention, next_attempt_at IS NOT NULL AS retry_queued
FROM alipayplus.cancellations ORDER BY cancellation_id;
-- one row per HTTP attempt, with the verified response signature
SELECT attempt_id, sent_id, result_status AS st, result_code, http_status,
	signature_verified, round(latency_ms::numeric, 1) AS ms
FROM alipayplus.cancel_attempts ORDER BY attempt_id;
-- what a person has to look at
SELECT sent_id, reason FROM alipayplus.attention;
-- nobody can move a cancelling order back, or mark one cancelled by hand
\set ON_ERROR_STOP 0
UPDATE shop.orders SET status = 'PAID' WHERE order_no = 2;
UPDATE shop.orders SET status = 'CANCELLED' WHERE order_no = 3;
SQL
cat <<EOF

In production pg_cron runs the processor every minute, as a role that may
only do that (README, "A shop's set-up, step by step"):
  SELECT cron.schedule_in_database('alipayplus-cancellations', '* * * * *',
      'CALL alipayplus_run_cancellations()', 'demo', 'cron_runner');

The cluster and the fake gateway are still running:
  psql -h $RIG -p $PGPORT_RIG -U postgres demo
Stop them with scripts/stop.sh.
EOF
