#!/usr/bin/env bash
# test/follow.sh: a verified S whose update of the bound order the caller's
# interrupt cut is not a person's work: the ledger row is CANCELLED, not
# flagged, and marked for the order to follow (order_follow_at); the next
# processor run updates the order (alipayplus._follow_orders), with the
# order table owner's rights, without waiting on an order someone else
# holds locked, and flags the row only when the order itself cannot be
# updated, or when its update is cut again (so that one order never holds
# up the queue: found in review, an owner's trigger raising 57014 stopped
# every run).  alipayplus_requeue_cancellation does it at once, and
# alipayplus.attention lists an order left waiting for 10 minutes, also
# one locked all that time (found in review: each try moved its time).
#
# Run as root from the repository, with the rig up:  bash test/follow.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_follow
TMP=$(mktemp -d /tmp/apc_follow.XXXXXX)
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
# the orders belong to a role that is not a superuser, as in a real shop
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || { not_ok "set up"; finish; }
DROP ROLE IF EXISTS apc_follow_shop;
CREATE ROLE apc_follow_shop;
CREATE SCHEMA shop AUTHORIZATION apc_follow_shop;
SET ROLE apc_follow_shop;
CREATE TABLE shop.orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING',
	who name);
CREATE TABLE shop.mode (slow boolean, fail boolean);
INSERT INTO shop.mode VALUES (true, false);
CREATE FUNCTION shop.order_trigger() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN
	IF NEW.st = 'CANCELLED' THEN
		IF (SELECT slow FROM shop.mode) THEN PERFORM pg_sleep(2); END IF;
		IF (SELECT fail FROM shop.mode) AND NEW.req LIKE '%-2' THEN
			RAISE EXCEPTION 'order % may not be cancelled today', NEW.req;
		END IF;
		IF NEW.req LIKE 'evil-%' THEN
			RAISE EXCEPTION 'as if cancelled' USING ERRCODE = 'query_canceled';
		END IF;
		NEW.who := current_user;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER t BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.order_trigger();
INSERT INTO shop.orders (req) VALUES ('fo-1');
RESET ROLE;
SELECT alipayplus_bind_orders('shop.orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
SELECT count(*) FROM shop.orders, alipayplus_request_cancel(payment_request_id => req);
SQL

# state: "ledger state|order status|flagged|to follow" of one order
state() {
	q $DB "SELECT c.state || '|' || o.st || '|' || c.needs_attention || '|' || (c.order_follow_at IS NOT NULL)
		FROM alipayplus.cancellations c JOIN shop.orders o ON o.req = c.sent_id WHERE c.sent_id = '$1'"
}

# 1. statement_timeout 1 s cuts the first order's update (its trigger sleeps 2 s)
$PGBIN/psql -X -q -d "$DB" >"$TMP/cut.out" 2>&1 <<'SQL'
SET statement_timeout = '1s';
CALL alipayplus_run_cancellations(10, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
sed 's/^/#   /' "$TMP/cut.out"
expect "the CALL ends with the statement timeout" 57014 "$(line_value "$TMP/cut.out" SQLSTATE)"
expect "fo-1, whose update was cut, waits for the next run: CANCELLED in the ledger, not flagged, to follow" \
	"CANCELLED|CANCELLING|false|true" "$(state fo-1)"
expect "a person is asked nothing (alipayplus.attention is empty)" 0 \
	"$(q $DB "SELECT count(*) FROM alipayplus.attention")"

# hold_order REQ SECONDS: another session holds order REQ locked for
# SECONDS, from half a second from now on
hold_order() {
	$PGBIN/psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL &
BEGIN;
SELECT 1 FROM shop.orders WHERE req = '$1' FOR UPDATE;
SELECT pg_sleep($2);
COMMIT;
SQL
	BG_PIDS+=($!)
	sleep 0.5
}

# 2. the next run, while another session holds fo-1 locked: fo-1 is left
#    for later without waiting; fo-2's order refuses (its owner's trigger
#    fails): flagged with the trigger's message; fo-3 ends CANCELLED both
#    in the ledger and in the order
q $DB "UPDATE shop.mode SET slow = false, fail = true" >/dev/null
q $DB "INSERT INTO shop.orders (req) VALUES ('fo-2'), ('fo-3')" >/dev/null
q $DB "SELECT count(*) FROM shop.orders, alipayplus_request_cancel(payment_request_id => req) WHERE req <> 'fo-1'" >/dev/null
hold_order fo-1 4
t0=$(now_ms)
$PGBIN/psql -X -q -d "$DB" >"$TMP/next.out" 2>&1 <<'SQL'
CALL alipayplus_run_cancellations(10, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
el=$(($(now_ms) - t0))
sed 's/^/#   /' "$TMP/next.out"
expect "the next run succeeds" 00000 "$(line_value "$TMP/next.out" SQLSTATE)"
if [ "$el" -lt 3000 ]; then
	ok "it did not wait on the order another session holds locked (${el} ms)"
else
	not_ok "it waited ${el} ms on the locked order"
fi
expect "fo-1 (locked): still to follow, a second later" "CANCELLED|CANCELLING|false|true" "$(state fo-1)"
expect "fo-2: the order's own refusal flags the row for a person, with its message" \
	"CANCELLED|CANCELLING|true|t" \
	"$(state fo-2 | cut -d'|' -f1-3)|$(q $DB "SELECT reason LIKE '%order fo-2 may not be cancelled today%' FROM alipayplus.attention WHERE sent_id = 'fo-2'")"
expect "fo-2 is flagged, no longer to follow" "true|false" "$(state fo-2 | cut -d'|' -f3-4)"
expect "fo-3: CANCELLED in the ledger and the order" "CANCELLED|CANCELLED|false|false" "$(state fo-3)"
wait "${BG_PIDS[@]}" 2>/dev/null

# 3. once the lock is gone, the next run: fo-1 follows, as the table's owner
q $DB "CALL alipayplus_run_cancellations(10, '1 min')" >/dev/null 2>&1
expect "fo-1: the order followed at the next run, as the table's owner" \
	"CANCELLED|CANCELLED|false|false|apc_follow_shop" \
	"$(state fo-1)|$(q $DB "SELECT who FROM shop.orders WHERE req = 'fo-1'")"

# requeue of a row still to follow updates its order at once
q $DB "INSERT INTO shop.orders (req) VALUES ('fo-4')" >/dev/null
q $DB "SELECT alipayplus_request_cancel(payment_request_id => 'fo-4')" >/dev/null
q $DB "UPDATE alipayplus.cancellations SET state = 'CANCELLED', cancelled_at = now(),
	next_attempt_at = NULL, order_follow_at = now() + interval '1 hour' WHERE sent_id = 'fo-4'" >/dev/null
expect "alipayplus_requeue_cancellation of a row to follow updates its order now" "CANCELLED|CANCELLED|false|false" \
	"$(q $DB "SELECT count(*) FROM alipayplus_requeue_cancellation((SELECT cancellation_id FROM alipayplus.cancellations WHERE sent_id = 'fo-4'))" >/dev/null; state fo-4)"

# 4. an order left waiting 10 minutes (no processor running) is listed
q $DB "UPDATE shop.mode SET fail = false" >/dev/null
q $DB "SELECT alipayplus_requeue_cancellation(cancellation_id) FROM alipayplus.cancellations WHERE sent_id = 'fo-2'" >/dev/null
expect "fo-2 followed after a person's requeue" "CANCELLED|CANCELLED|false|false" "$(state fo-2)"
q $DB "UPDATE alipayplus.cancellations SET order_follow_at = now() - interval '11 minutes' WHERE sent_id = 'fo-1'" >/dev/null
expect "alipayplus.attention lists an order waiting to follow for over 10 minutes" "t" \
	"$(q $DB "SELECT reason LIKE 'Alipay+ cancelled the payment, and the bound order has waited since%' FROM alipayplus.attention WHERE sent_id = 'fo-1'")"
# 5. an order locked for longer than 10 minutes: listed, its time kept
# to_follow ID SINCE: a queued order whose ledger row is CANCELLED and to
# follow since SINCE (as after a cut apply)
to_follow() {
	q $DB "INSERT INTO shop.orders (req) VALUES ('$1')" >/dev/null
	q $DB "SELECT alipayplus_request_cancel(payment_request_id => '$1')" >/dev/null
	q $DB "UPDATE alipayplus.cancellations SET state = 'CANCELLED', cancelled_at = now(),
		next_attempt_at = NULL, order_follow_at = $2 WHERE sent_id = '$1'" >/dev/null
}
to_follow fo-5 "now() - interval '11 minutes'"
since=$(q $DB "SELECT order_follow_at FROM alipayplus.cancellations WHERE sent_id = 'fo-5'")
hold_order fo-5 3
q $DB "CALL alipayplus_run_cancellations(10, '1 min')" >/dev/null 2>&1
expect "an order locked all the while keeps its time to follow, and is listed after 10 minutes" \
	"$since|t" \
	"$(q $DB "SELECT order_follow_at FROM alipayplus.cancellations WHERE sent_id = 'fo-5'")|$(q $DB "SELECT count(*) = 1 FROM alipayplus.attention WHERE sent_id = 'fo-5'")"
wait "${BG_PIDS[@]}" 2>/dev/null

# 6. an order whose update is cut again (its owner's trigger raises 57014)
#    is flagged: the next run serves the queue
to_follow evil-6 "now()"
$PGBIN/psql -X -q -d "$DB" >"$TMP/evil.out" 2>&1 <<'SQL'
CALL alipayplus_run_cancellations(10, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
sed 's/^/#   /' "$TMP/evil.out"
expect "the run whose follow was cut ends as cut (57014)" 57014 "$(line_value "$TMP/evil.out" SQLSTATE)"
q $DB "INSERT INTO shop.orders (req) VALUES ('fo-7')" >/dev/null
q $DB "SELECT alipayplus_request_cancel(payment_request_id => 'fo-7')" >/dev/null
$PGBIN/psql -X -q -d "$DB" >"$TMP/after.out" 2>&1 <<'SQL'
CALL alipayplus_run_cancellations(10, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
expect "the next run succeeds and serves the queue" "00000|CANCELLED|CANCELLED|false|false" \
	"$(line_value "$TMP/after.out" SQLSTATE)|$(state fo-7)"
expect "the order cut again is flagged for a person, no longer to follow" \
	"CANCELLED|CANCELLING|true|false|t" \
	"$(state evil-6)|$(q $DB "SELECT attention_reason LIKE '%as if cancelled (SQLSTATE 57014)%' FROM alipayplus.cancellations WHERE sent_id = 'evil-6'")"
rm -rf "$TMP"
finish
