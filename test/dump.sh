#!/usr/bin/env bash
# test/dump.sh: the ledger survives pg_dump and restore.  The ledger tables
# are extension configuration tables, so their rows (and the identity
# sequences) are in a dump; after restoring into a new database the
# cancelled rows are still cancelled and guarded, the bound orders table is
# still bound and guarded, and the processor carries on with the queue.
# A parallel restore (pg_restore -j 4, from pg_dump -Fd and -Fc) brings
# back every ledger row and attempt and exits 0, and alipayplus.check_ledger()
# finds no attempt without its ledger row.  The attempts are guarded (no
# foreign key since 1.3): no UPDATE of what they recorded, no DELETE, no
# TRUNCATE; check_ledger() lists what a superuser's workaround orphaned.
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
	for fmt in d c; do
		q postgres "DROP DATABASE IF EXISTS apc_dump_par_$fmt WITH (FORCE)" >/dev/null 2>&1
	done
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

# A parallel restore (pg_restore -j) loads the configuration tables' data in
# several sessions at once, in no order: pg_dump records no dependency of one
# table's data on another's in the archive.  Every row must come back, and
# pg_restore must exit 0, from the directory and the custom format.  Enough
# rows that the tables' loads overlap: before 1.3 the foreign key from
# cancel_attempts to cancellations refused every attempt (3 of 3 runs).
psql_rig -q -d $SRC >/dev/null <<SQL
SELECT count(*) FROM alipayplus_request_cancel_all(
	ARRAY(SELECT 'dump-many-$TAG-' || i FROM pg_catalog.generate_series(1, 3000) i));
SELECT claimed FROM alipayplus_process_cancellations(300, '2 minutes');
SQL
ledger_sum="SELECT (SELECT count(*) || ':' || md5(string_agg(c::text, ',' ORDER BY cancellation_id)) FROM alipayplus.cancellations c)
	|| '|' || (SELECT count(*) || ':' || md5(string_agg(a::text, ',' ORDER BY attempt_id)) FROM alipayplus.cancel_attempts a)"
want=$(q $SRC "$ledger_sum")
case "$want" in 3003:*'|'302:*) ok "source: 3003 ledger rows, 302 attempts" ;;
	*) not_ok "source ledger for the parallel restore: $want" ;; esac
for fmt in d c; do
	PAR=apc_dump_par_$fmt
	q postgres "DROP DATABASE IF EXISTS $PAR WITH (FORCE)" >/dev/null 2>&1
	q postgres "CREATE DATABASE $PAR" >/dev/null
	rm -rf "$RIG/dump.$fmt"
	$PGBIN/pg_dump -F$fmt -d $SRC -f "$RIG/dump.$fmt" || not_ok "pg_dump -F$fmt"
	if $PGBIN/pg_restore -j 4 -d $PAR "$RIG/dump.$fmt" >"$RIG/restore.$fmt.out" 2>&1; then
		ok "pg_restore -j 4 of pg_dump -F$fmt exits 0"
	else
		not_ok "pg_restore -j 4 of pg_dump -F$fmt: $(head -3 "$RIG/restore.$fmt.out")"
	fi
	expect "pg_restore -j 4 (-F$fmt): every ledger row and attempt, unchanged" "$want" "$(q $PAR "$ledger_sum")"
	expect "pg_restore -j 4 (-F$fmt): every attempt belongs to a restored ledger row" "0" \
		"$(q $PAR "SELECT count(*) FROM alipayplus.cancel_attempts a WHERE a.cancellation_id IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM alipayplus.cancellations c WHERE c.cancellation_id = a.cancellation_id)")"
	expect "pg_restore -j 4 (-F$fmt): alipayplus.check_ledger() finds nothing" "0" \
		"$(q $PAR "SELECT count(*) FROM alipayplus.check_ledger()" 2>&1)"
	q postgres "DROP DATABASE IF EXISTS $PAR WITH (FORCE)" >/dev/null 2>&1
done

# still guarded after the restore
err=$(q $DST "UPDATE orders SET status = 'NEW' WHERE id = 1" 2>&1)
case "$err" in *"cannot change status"*) ok "restored order guard refuses CANCELLED -> NEW" ;;
	*) not_ok "restored order guard: $err" ;; esac
err=$(q $DST "DELETE FROM alipayplus.cancellations" 2>&1)
case "$err" in *"cannot delete row"*) ok "restored ledger guard refuses DELETE" ;;
	*) not_ok "restored ledger guard: $err" ;; esac

# the attempts' guard: what the foreign key used to refuse, and more
# guarded_attempts NAME SQL: SQL fails with ZA001 and leaves the attempts as they were
attempts_sum="SELECT count(*) || ':' || md5(string_agg(a::text, ',' ORDER BY attempt_id)) FROM alipayplus.cancel_attempts a"
before=$(q $DST "$attempts_sum")
guarded_attempts() {
	local err
	err=$($PGBIN/psql -X -qAt -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -d $DST -c "\set VERBOSITY verbose" -c "$2" 2>&1)
	case "$err" in *"ERROR:  ZA001: cannot "*) ok "attempts guard refuses $1" ;;
		*) not_ok "attempts guard refuses $1: got '$err'" ;; esac
}
guarded_attempts "moving an attempt to another ledger row" "UPDATE alipayplus.cancel_attempts SET cancellation_id = 424242"
guarded_attempts "changing the id an attempt sent" "UPDATE alipayplus.cancel_attempts SET sent_id = sent_id || 'x'"
guarded_attempts "changing Alipay+'s answer" "UPDATE alipayplus.cancel_attempts SET result_status = 'S', result_code = 'SUCCESS'"
guarded_attempts "DELETE" "DELETE FROM alipayplus.cancel_attempts"
guarded_attempts "TRUNCATE" "TRUNCATE alipayplus.cancel_attempts"
guarded_attempts "TRUNCATE of the ledger with CASCADE" "TRUNCATE alipayplus.cancellations, alipayplus.cancel_attempts CASCADE"
expect "the refused statements left the attempts as they were" "$before" "$(q $DST "$attempts_sum")"
expect "attempted_at can still be moved" "2" \
	"$(q $DST "WITH u AS (UPDATE alipayplus.cancel_attempts SET attempted_at = attempted_at RETURNING 1) SELECT count(*) FROM u")"
expect "alipayplus.check_ledger() is not for PUBLIC" "f" \
	"$(q $DST "SELECT has_function_privilege('public', 'alipayplus.check_ledger()', 'EXECUTE')" 2>&1)"
# a superuser who switches the guards off can still orphan attempts: check_ledger() lists them
orphans=$(psql_rig -qAt -d $DST 2>&1 <<SQL | paste -sd'|'
BEGIN;
ALTER TABLE alipayplus.cancellations DISABLE TRIGGER USER;
ALTER TABLE alipayplus.cancel_attempts DISABLE TRIGGER USER;
DELETE FROM alipayplus.cancellations WHERE payment_request_id = 'f-PROCESS_FAIL-dump-$TAG';
UPDATE alipayplus.cancel_attempts SET sent_id = sent_id || '-x' WHERE sent_id = 'dump-ok-$TAG';
SELECT string_agg(problem, ',' ORDER BY attempt_id) FROM alipayplus.check_ledger() WHERE problem = 'no ledger row';
SELECT string_agg(problem, ',' ORDER BY attempt_id) FROM alipayplus.check_ledger() WHERE problem <> 'no ledger row';
ROLLBACK;
SQL
)
expect "check_ledger() lists attempts a superuser orphaned or re-keyed" \
	"no ledger row|sent paymentRequestId dump-ok-$TAG-x, its ledger row sends paymentRequestId dump-ok-$TAG" "$orphans"

# the identity sequences continue after the restored ids, and the queue goes on
expect "processor in the restored database" "1|1" \
	"$(q $DST "SELECT claimed || '|' || cancelled FROM alipayplus_process_cancellations()")"
expect "new attempt ids follow the restored ones" "t" \
	"$(q $DST "SELECT max(attempt_id) = 3 AND count(*) = 3 FROM alipayplus.cancel_attempts")"
expect "queued order cancelled after the restore" "CANCELLED" \
	"$(q $DST "SELECT status FROM orders WHERE id = 2")"
finish
