#!/usr/bin/env bash
# test/settle_timeout.sh: an answer that arrives within its timeout is
# recorded as the gateway's answer, even when the run was busy applying
# another answer at that moment (found in review of issue 16: libcurl was
# not driven while an owner's slow trigger ran, and when driven again it
# checked its deadline before reading the answer already waiting, so the
# call was recorded as U local.timeout although the gateway answered in
# 1 s of 3).  A gateway that really is silent past the timeout is still
# recorded as local.timeout, at the timeout.
#
# Run as root from the repository, with the rig up:  bash test/settle_timeout.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_settle_to
TAG=$(date +%s%N)
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || { not_ok "set up"; finish; }
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
-- the first order's owner trigger takes 5 s
CREATE FUNCTION slow_trigger() RETURNS trigger LANGUAGE plpgsql AS
\$\$ BEGIN
	IF NEW.st = 'CANCELLED' AND NEW.req LIKE 'st-a-%' THEN PERFORM pg_sleep(5); END IF;
	RETURN NEW;
END \$\$;
CREATE TRIGGER slow BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION slow_trigger();
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders VALUES ('st-a-$TAG'), ('slow-1000-st-b-$TAG'), ('slow-60000-st-c-$TAG'),
	('slow-200-st-warm-1-$TAG'), ('slow-200-st-warm-2-$TAG'), ('slow-200-st-warm-3-$TAG');
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req) WHERE req LIKE '%warm%';
SQL

# timeout 3 s: a is answered at once and applied for 5 s; b is answered
# after 1 s, while a's trigger runs; c is never answered in time.  The
# session first makes three calls at once, so that the three connections
# are open when a, b and c leave: on a loaded machine a new connection's
# TLS handshake could otherwise still be under way when a's answer came
# and its apply began, and b's request would leave only after it (then a
# timeout is the right record: the request was late, not its answer).
$PGBIN/psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL
SET alipayplus.timeout_ms = 3000;
SET alipayplus.max_concurrency = 3;
CALL alipayplus_run_cancellations(3, '1 min');
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req) WHERE req NOT LIKE '%warm%';
CALL alipayplus_run_cancellations(3, '1 min');
SQL
expect "the three warm-up calls were answered" "3" \
	"$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id LIKE '%warm%' AND result_status = 'S'")"
row() {
	q $DB "SELECT result_status || ' ' || result_code FROM alipayplus.cancel_attempts WHERE sent_id = '$1'"
}
expect "a (answered at once, applied for 5 s): S SUCCESS" "S SUCCESS" "$(row "st-a-$TAG")"
expect "b (answered after 1 s of its 3, while a was applied): S SUCCESS, not local.timeout" "S SUCCESS" "$(row "slow-1000-st-b-$TAG")"
expect "b's order CANCELLED" "CANCELLED" "$(q $DB "SELECT st FROM orders WHERE req = 'slow-1000-st-b-$TAG'")"
expect "c (silent past its 3 s): U local.timeout" "U local.timeout" "$(row "slow-60000-st-c-$TAG")"
lat=$(q $DB "SELECT round(latency_ms) FROM alipayplus.cancel_attempts WHERE sent_id = 'slow-60000-st-c-$TAG'")
if [[ "$lat" =~ ^[0-9]+$ ]] && [ "$lat" -ge 2900 ]; then
	ok "c timed out no earlier than its timeout (${lat} ms)"
else
	not_ok "c's latency '${lat}' ms is below its 3000 ms timeout"
fi
finish
