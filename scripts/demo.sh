#!/usr/bin/env bash
# scripts/demo.sh: set up the rig (scripts/lib.sh), then cancel three
# payments through the fake Alipay+ gateway and show an S, an F and a U
# outcome and the rows they leave.  The cluster and gateway keep running
# afterwards so that you can look around; scripts/stop.sh stops them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rig_up

say "demo: a shop's orders table, bound to the cancellation ledger"
suffix=$(date +%s)
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS demo" -c "CREATE DATABASE demo"
psql_rig -d demo <<SQL
\set ECHO queries
CREATE EXTENSION alipayplus_cancel;
CREATE TABLE orders (
	order_no int PRIMARY KEY,
	payment_request_id text UNIQUE NOT NULL,
	status text NOT NULL DEFAULT 'PENDING',
	created_at timestamptz NOT NULL DEFAULT now()
);
SELECT alipayplus_bind_orders('orders', 'payment_request_id', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID');
INSERT INTO orders (order_no, payment_request_id) VALUES
	(1, 'DEMO-$suffix-1'),
	(2, 'f-PROCESS_FAIL-$suffix-2'),
	(3, 'u-UNKNOWN_EXCEPTION-$suffix-3');

-- the fake gateway answers S for order 1, F PROCESS_FAIL for order 2 and
-- U UNKNOWN_EXCEPTION for order 3 (it picks the outcome from the id)
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'DEMO-$suffix-1');
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'f-PROCESS_FAIL-$suffix-2');
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'u-UNKNOWN_EXCEPTION-$suffix-3');

-- the orders: S cancelled order 1; orders 2 and 3 can now only become CANCELLED
SELECT order_no, payment_request_id, status FROM orders ORDER BY order_no;
-- the ledger: one row per payment whose cancellation was requested
SELECT payment_request_id, state, attempt_count, last_result_status AS st,
	last_result_code, needs_attention, next_attempt_at IS NOT NULL AS retry_queued
FROM alipayplus.cancellations ORDER BY cancellation_id;
-- one row per HTTP attempt, with the verified response signature
SELECT attempt_id, sent_id, result_status AS st, result_code, http_status,
	signature_verified, round(latency_ms::numeric, 1) AS ms
FROM alipayplus.cancel_attempts ORDER BY attempt_id;
-- what a person has to look at
SELECT payment_request_id, reason FROM alipayplus.attention;
-- a DBA cannot move a cancelling order back
\set ON_ERROR_STOP 0
UPDATE orders SET status = 'PAID' WHERE order_no = 2;
SQL
cat <<EOF

The cluster and the fake gateway are still running:
  psql -h $RIG -p $PGPORT_RIG -U postgres demo
Stop them with scripts/stop.sh.
EOF
