#!/usr/bin/env bash
# test/select_interrupt.sh: the SELECT form of the processor
# (alipayplus_process_cancellations, in the caller's transaction) never
# returns success after a statement_timeout, even when the timeout fires
# inside the bound table owner's slow trigger, where the settle's
# subtransaction catches it (found in review of issue 16: the caller got a
# result row and could commit).  The error is PostgreSQL's own (57014),
# and everything the run did rolls back with the caller's transaction.
# The CALL form's case is in test/audit.sh (slowtrig).
#
# Second case: the run stops first because statement_timeout is near
# (its own margin), and the timeout itself then fires while that stop
# applies an answer that had already come in: still PostgreSQL's error,
# never a result (seen in CI: the run returned its counts).
#
# Run as root from the repository, with the rig up:  bash test/select_interrupt.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_selint
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || { not_ok "set up"; finish; }
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION slow_trigger() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN IF NEW.st = 'CANCELLED' THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION slow_trigger();
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders (req) SELECT 'selint-' || i FROM generate_series(1, 6) i;
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req);
SQL

# timed_select CASE TIMEOUT [PRELUDE]: the SELECT form under statement_timeout
# TIMEOUT (after the SQL PRELUDE, in the same session) ends with
# PostgreSQL's 57014 and returns no row
timed_select() {
	local out
	out=$({ echo "${3:-}"; cat <<'SQL'; } | $PGBIN/psql -X -qAt -d "$DB" -v timeout="$2" 2>&1
\set VERBOSITY terse
SET statement_timeout = :'timeout';
SELECT 'returned', claimed FROM alipayplus_process_cancellations(10, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
)
	echo "$out" | sed 's/^/# /'
	expect "$1: the SELECT form fails with PostgreSQL's statement timeout (57014)" \
		"SQLSTATE=57014" "$(echo "$out" | grep -o 'SQLSTATE=[0-9A-Z]*' | tail -n 1)"
	if echo "$out" | grep -q '^returned'; then
		not_ok "$1: the SELECT form returned a result after the statement timeout"
	else
		ok "$1: no result row after the statement timeout"
	fi
}
timed_select "the timeout in an owner's trigger" 2500ms
expect "everything rolled back with the caller: no attempt on record" \
	"0" "$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts")"
expect "every cancellation still due, none flagged" \
	"6" "$(q $DB "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLING' AND NOT needs_attention")"

# Case 2, in a database of its own.  Order a is answered at once and its
# owner's trigger takes 3.7 s, so the first settle ends past the 3.5 s mark
# (statement_timeout 4 s less the run's 0.5 s margin); order b's answer
# (0.5 s) has come in meanwhile, and the stop applies it: b's trigger
# sleeps, and the statement timeout fires inside it.  Two calls made first
# in the same session leave it two open connections, so that b's request
# leaves at once (on a new one, its TLS handshake would wait on a's settle,
# b would still be unanswered at the stop, and the run would end early
# without the timeout: rightly, with its counts).
q postgres "DROP DATABASE $DB WITH (FORCE)" >/dev/null 2>&1
DB=apc_selint2
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || { not_ok "set up case 2"; finish; }
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION slow_trigger() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN
	IF NEW.st = 'CANCELLED' THEN
		PERFORM pg_sleep(CASE WHEN NEW.req LIKE '%-a' THEN 3.7
							  WHEN NEW.req LIKE '%-b' THEN 1 ELSE 0 END);
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER slow BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION slow_trigger();
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders (req) VALUES ('selint2-a'), ('slow-500-selint2-b'),
	('slow-200-selint2-warm-1'), ('slow-200-selint2-warm-2');
SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req) WHERE req LIKE '%warm%';
SQL
timed_select "near the timeout, then the timeout in the stop's apply" 4000ms \
	"SELECT claimed FROM alipayplus_process_cancellations(2, '10 s');
	 SELECT count(*) FROM orders, alipayplus_request_cancel(payment_request_id => req)
		WHERE req NOT LIKE '%warm%';"
expect "case 2: everything rolled back with the caller" \
	"0|2" "$(q $DB "SELECT (SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id NOT LIKE '%warm%'), (SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLING' AND NOT needs_attention)")"
finish
