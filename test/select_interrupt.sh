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

out=$($PGBIN/psql -X -qAt -d "$DB" 2>&1 <<'SQL'
\set VERBOSITY terse
SET statement_timeout = '2500ms';
SELECT 'returned', claimed FROM alipayplus_process_cancellations(10, '1 min');
\echo SQLSTATE=:SQLSTATE
SQL
)
echo "$out" | sed 's/^/# /'
expect "the SELECT form fails with PostgreSQL's statement timeout (57014)" \
	"SQLSTATE=57014" "$(echo "$out" | grep -o 'SQLSTATE=[0-9A-Z]*' | tail -n 1)"
if echo "$out" | grep -q '^returned'; then
	not_ok "the SELECT form returned a result after the statement timeout"
else
	ok "no result row after the statement timeout"
fi
expect "everything rolled back with the caller: no attempt on record" \
	"0" "$(q $DB "SELECT count(*) FROM alipayplus.cancel_attempts")"
expect "every cancellation still due, none flagged" \
	"6" "$(q $DB "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLING' AND NOT needs_attention")"
finish
