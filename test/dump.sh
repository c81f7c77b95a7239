#!/usr/bin/env bash
# test/dump.sh: the ledger survives pg_dump and restore.  The ledger tables
# are extension configuration tables, so their rows (and the identity
# sequences) are in a dump; after restoring into a new database the
# cancelled rows are still cancelled and guarded, the bound orders table is
# still bound and guarded, and the processor carries on with the queue.
#
# Uses the main rig cluster and two databases of its own.
# Run as root from the repository:  bash test/dump.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

SRC=apc_dump_src
DST=apc_dump_dst
TAG=$(date +%s%N)
cleanup() {
	q postgres "DROP DATABASE IF EXISTS $SRC WITH (FORCE)" >/dev/null 2>&1
	q postgres "DROP DATABASE IF EXISTS $DST WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT
cleanup
q postgres "CREATE DATABASE $SRC" >/dev/null && q postgres "CREATE DATABASE $DST" >/dev/null

psql_rig -q -d $SRC >/dev/null <<SQL
CREATE EXTENSION alipayplus_cancel;
CREATE TABLE orders (id int PRIMARY KEY, req text UNIQUE NOT NULL, status text NOT NULL DEFAULT 'NEW');
INSERT INTO orders VALUES (1, 'dump-ok-$TAG'), (2, 'dump-queued-$TAG'), (3, 'f-PROCESS_FAIL-dump-$TAG');
SELECT alipayplus_bind_orders('orders', 'req', 'status', 'CANCELLED', 'CANCELLING');
SELECT alipayplus_note_refund('dump-refund-$TAG');
INSERT INTO alipayplus.result_policy VALUES ('DUMP_CODE_$TAG', 'retry', 'added by a DBA');
UPDATE alipayplus.result_policy SET action = 'retry' WHERE result_code = 'ORDER_NOT_EXIST';
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'dump-ok-$TAG');
SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'f-PROCESS_FAIL-dump-$TAG');
SELECT alipayplus_request_cancel(payment_request_id => 'dump-queued-$TAG');
SQL
expect "source: ledger before the dump" "CANCELLED|CANCELLING|CANCELLING" \
	"$(q $SRC "SELECT string_agg(state, '|' ORDER BY cancellation_id) FROM alipayplus.cancellations")"

$PGBIN/pg_dump -d $SRC -f "$RIG/dump.sql" || not_ok "pg_dump"
psql_rig -q -d $DST -f "$RIG/dump.sql" >"$RIG/restore.out" 2>&1 || not_ok "restore: $(head -5 "$RIG/restore.out")"

expect "restored ledger rows and states" "CANCELLED|CANCELLING|CANCELLING" \
	"$(q $DST "SELECT string_agg(state, '|' ORDER BY cancellation_id) FROM alipayplus.cancellations")"
expect "restored attempts" "2" "$(q $DST "SELECT count(*) FROM alipayplus.cancel_attempts")"
expect "restored attention flag" "t" \
	"$(q $DST "SELECT needs_attention FROM alipayplus.cancellations WHERE payment_request_id = 'f-PROCESS_FAIL-dump-$TAG'")"
expect "restored orders" "CANCELLED|CANCELLING|CANCELLING" \
	"$(q $DST "SELECT string_agg(status, '|' ORDER BY id) FROM orders")"
expect "restored binding" "orders" "$(q $DST "SELECT orders::text FROM alipayplus.order_binding")"
expect "restored refund list" "1" "$(q $DST "SELECT count(*) FROM alipayplus.known_refunds")"
expect "built-in policy once, the DBA's rows kept" "1|1|retry" \
	"$(q $DST "SELECT count(*) FILTER (WHERE result_code = 'PROCESS_FAIL') || '|' || count(*) FILTER (WHERE result_code = 'DUMP_CODE_$TAG')
		|| '|' || (SELECT action FROM alipayplus.result_policy WHERE result_code = 'ORDER_NOT_EXIST' ORDER BY builtin LIMIT 1)
		FROM alipayplus.result_policy")"

# still guarded after the restore
err=$(q $DST "UPDATE orders SET status = 'NEW' WHERE id = 1" 2>&1)
case "$err" in *"cannot change status"*) ok "restored order guard refuses CANCELLED -> NEW" ;;
	*) not_ok "restored order guard: $err" ;; esac
err=$(q $DST "DELETE FROM alipayplus.cancellations" 2>&1)
case "$err" in *"cannot delete row"*) ok "restored ledger guard refuses DELETE" ;;
	*) not_ok "restored ledger guard: $err" ;; esac

# the identity sequences continue after the restored ids, and the queue goes on
expect "processor in the restored database" "1|1" \
	"$(q $DST "SELECT claimed || '|' || cancelled FROM alipayplus_process_cancellations()")"
expect "new attempt ids follow the restored ones" "t" \
	"$(q $DST "SELECT max(attempt_id) = 3 AND count(*) = 3 FROM alipayplus.cancel_attempts")"
expect "queued order cancelled after the restore" "CANCELLED" \
	"$(q $DST "SELECT status FROM orders WHERE id = 2")"
finish
