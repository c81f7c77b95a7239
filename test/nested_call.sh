#!/usr/bin/env bash
# test/nested_call.sh: a call to Alipay+ made from inside a processor run
# is refused, and the run keeps its own answers (found in review of issue
# 16: an order table owner's trigger that called alipayplus_cancel_payment
# while the run applied an answer drove the run's transfers and freed
# their memory, so the run's verified S answers were recorded as garbage U).
#
# The orders belong to a role that is not a superuser, with EXECUTE on the
# calling functions.  nest-1 is answered at once; its order's trigger calls
# alipayplus_cancel_payment (and nest-5's trigger a processor function)
# while the other calls (answered after 1.5 to 2.5 s) are in flight.  The
# nested calls fail with 55006 and reach no gateway; the owner's trigger
# failing flags those rows as any failing trigger does; every other answer
# is recorded as the gateway sent it (S, verified), the orders CANCELLED,
# one request per attempt; and the same session calls Alipay+ again.
#
# Run as root from the repository, with the rig up:  bash test/nested_call.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_nested
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_nested.XXXXXX)
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || { not_ok "set up"; finish; }
DROP ROLE IF EXISTS apc_nested_shop;
CREATE ROLE apc_nested_shop;
GRANT CREATE ON SCHEMA public TO apc_nested_shop;
GRANT EXECUTE ON FUNCTION alipayplus_cancel_payment(text, text) TO apc_nested_shop;
GRANT EXECUTE ON FUNCTION alipayplus_process_cancellations(integer, interval, bigint) TO apc_nested_shop;
SET ROLE apc_nested_shop;
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION nest_trigger() RETURNS trigger LANGUAGE plpgsql AS
\$\$ BEGIN
	IF NEW.st = 'CANCELLED' AND NEW.req = 'nest-1-$TAG' THEN
		PERFORM alipayplus_cancel_payment(payment_request_id => 'inner-$TAG');
	ELSIF NEW.st = 'CANCELLED' AND NEW.req = 'nest-5-$TAG' THEN
		PERFORM alipayplus_process_cancellations(10, '10 s');
	END IF;
	RETURN NEW;
END \$\$;
CREATE TRIGGER nest BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION nest_trigger();
RESET ROLE;
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders VALUES ('nest-1-$TAG'), ('slow-1500-nest-2-$TAG'), ('slow-2000-nest-3-$TAG'),
	('slow-2500-nest-4-$TAG'), ('nest-5-$TAG');
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req);
SQL

$PGBIN/psql -X -q -d "$DB" >"$TMP/run.out" 2>&1 <<SQL
SET alipayplus.max_concurrency = 8;
CALL alipayplus_run_cancellations(10, '30 s');
\echo SQLSTATE=:SQLSTATE
-- the same session, after the run: its transport is whole
SELECT 'AFTER=' || result_status || ' ' || result_code AS e FROM alipayplus_cancel_payment(payment_request_id => 'after-$TAG') \\gset
\\echo :e
SQL
sed 's/^/#   /' "$TMP/run.out"
expect "the run itself succeeds" 00000 "$(line_value "$TMP/run.out" SQLSTATE)"
expect "the nested cancel_payment and processor calls were refused with 55006, each order's row flagged with the reason" \
	"2" \
	"$(q $DB "SELECT count(*) FROM alipayplus.cancellations WHERE needs_attention
		AND attention_reason LIKE '%already calling Alipay+%(SQLSTATE 55006)%'
		AND sent_id IN ('nest-1-$TAG', 'nest-5-$TAG')")"
expect "the nested calls reached no gateway" "0" "$(gateway_requests "inner-$TAG")"
expect "the outer run's answers are recorded as the gateway sent them: S SUCCESS, verified, complete" \
	"5|5|5|0" \
	"$(q $DB "SELECT count(*) || '|' || count(*) FILTER (WHERE result_code = 'SUCCESS') || '|' ||
		count(*) FILTER (WHERE signature_verified) || '|' ||
		count(*) FILTER (WHERE result_code LIKE 'local.%')
		FROM alipayplus.cancel_attempts WHERE sent_id LIKE '%nest-%'")"
expect "every ledger row CANCELLED; the orders whose triggers did not call out are CANCELLED" \
	"5|3" \
	"$(q $DB "SELECT (SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED' AND sent_id LIKE '%nest-%') || '|' ||
		(SELECT count(*) FROM orders WHERE st = 'CANCELLED')")"
for id in nest-1 slow-1500-nest-2 slow-2000-nest-3 slow-2500-nest-4 nest-5; do
	expect "$id: one request, one attempt" "1|1" \
		"$(gateway_requests "$id-$TAG")|$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id = '$id-$TAG'")"
done
expect "the same session calls Alipay+ again after the run" "S SUCCESS" "$(line_value "$TMP/run.out" AFTER)"
rm -rf "$TMP"
finish
