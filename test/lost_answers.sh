#!/usr/bin/env bash
# test/lost_answers.sh: what sql/lost_answers.sql cannot do in one session
# (issue 19).
#
# 1. A partitioned bound table has no unique index on the request id: a
#    duplicate row inserted by another session while alipayplus_cancel_payment
#    waits for Alipay+ must not be set CANCELLED with the order that was
#    locked.  The verified S is recorded, the ledger row CANCELLED and
#    flagged (the update is undone: exactly one row must change), both
#    order rows stay as they were.
# 2. NOTIFY alipayplus_cancellations still arrives after a plain commit
#    (it is queued at commit now, so that PREPARE TRANSACTION works).

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

DB=apc_lost_answers
SUFFIX=$(date +%s%N)
ID="slow-3000-dup-$SUFFIX"
qd() { q "$DB" "$1"; }
cleanup() { q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1; }
trap cleanup EXIT
cleanup
q postgres "CREATE DATABASE $DB" >/dev/null
qd "CREATE EXTENSION alipayplus_cancel" >/dev/null
qd "CREATE TABLE o (rid text NOT NULL, st text NOT NULL DEFAULT 'NEW', part int NOT NULL) PARTITION BY LIST (part);
	CREATE TABLE o1 PARTITION OF o FOR VALUES IN (1);
	CREATE TABLE o2 PARTITION OF o FOR VALUES IN (2);
	SELECT alipayplus_bind_orders('o', 'rid', 'st', 'CANCELLED', 'CANCELLING');
	INSERT INTO o VALUES ('$ID', 'NEW', 1)" >/dev/null

# --- 1. a duplicate id inserted during the call --------------------------
out=$RIG/lost_answers.out
$PGBIN/psql -X -qAt -d $DB -c "SELECT result_status || '|' || state FROM alipayplus_cancel_payment(payment_request_id => '$ID')" >"$out" 2>&1 &
bg=$!
# wait (up to 30 s) until the call is in flight: the order row is locked then
waiting=f
for _ in $(seq 1 300); do
	waiting=$(q postgres "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = '$DB' AND wait_event = 'Extension' AND query LIKE '%alipayplus_cancel_payment%')")
	[ "$waiting" = t ] && break
	sleep 0.1
done
expect "the direct call is waiting for the gateway" t "$waiting"
qd "INSERT INTO o VALUES ('$ID', 'NEW', 2)" >/dev/null
wait_exit $bg 60 || not_ok "the direct call did not end"
wait $bg || true
expect "the call reports the verified S and a CANCELLED ledger row" "S|CANCELLED" "$(grep -v WARNING "$out" | head -n 1)"
if grep -q "2 rows of public.o have rid" "$out"; then
	ok "a WARNING says two rows have the id"
else
	not_ok "no WARNING about the two rows: $(tr '\n' ' ' <"$out")"
fi
expect "neither order row was set CANCELLED (the locked one stays CANCELLING)" "1:CANCELLING 2:NEW" \
	"$(qd "SELECT string_agg(part || ':' || st, ' ' ORDER BY part) FROM o WHERE rid = '$ID'")"
expect "the ledger row is CANCELLED and flagged for a person" "CANCELLED|t|t" \
	"$(qd "SELECT state, needs_attention, attention_reason LIKE '%2 rows of public.o have rid%' FROM alipayplus.cancellations WHERE sent_id = '$ID'")"
expect "it shows in alipayplus.attention" "1" \
	"$(qd "SELECT count(*) FROM alipayplus.attention WHERE sent_id = '$ID'")"
expect "one call went out" "1" "$(gateway_requests "$ID")"
# a person removes the duplicate; requeue lets the order follow
qd "DELETE FROM o WHERE rid = '$ID' AND part = 2" >/dev/null
qd "SELECT alipayplus_requeue_cancellation(cancellation_id) FROM alipayplus.cancellations WHERE sent_id = '$ID'" >/dev/null
expect "after requeue the order is CANCELLED and nothing is flagged" "CANCELLED|f" \
	"$(qd "SELECT o.st, c.needs_attention FROM o JOIN alipayplus.cancellations c ON c.sent_id = o.rid WHERE o.rid = '$ID'")"

# --- 2. NOTIFY after commit ------------------------------------------------
notify=$($PGBIN/psql -X -qAt -d $DB -c "LISTEN alipayplus_cancellations" \
	-c "SELECT cancellation_id FROM alipayplus_request_cancel(payment_request_id => 'notify-$SUFFIX')" \
	-c "SELECT 1" 2>&1)
cid=$(qd "SELECT cancellation_id FROM alipayplus.cancellations WHERE sent_id = 'notify-$SUFFIX'")
if grep -q "notification \"alipayplus_cancellations\" with payload \"$cid\"" <<<"$notify"; then
	ok "NOTIFY alipayplus_cancellations with the new cancellation's id arrived after commit"
else
	not_ok "no NOTIFY with payload $cid: $(tr '\n' ' ' <<<"$notify")"
fi

finish
