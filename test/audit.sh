#!/usr/bin/env bash
# test/audit.sh: every request that leaves is on record (issue 16).
#
# The committing processor (CALL alipayplus_run_cancellations) works a
# queue of 96 cancellations, 64 calls in flight, each answered S by the
# gateway after 1.5 s, and is interrupted half a second into its first
# window by
#   1. pg_cancel_backend()
#   2. pg_terminate_backend()
#   3. kill -9 of its backend (the postmaster restarts every backend)
#   4. statement_timeout = 1800ms: the window's calls are ended by the
#      run itself before their answer, early enough to record them (about
#      0.8 s in), and the run stops there
# and then run again until the queue is empty.  Each time, before and after
# the rerun: the gateway's log (one line per request it received) and
# alipayplus.cancel_attempts hold the same number of requests for the run's
# ids; processor_runs shows the interrupted run and why it stopped; the
# errors name their true cause; in the end every payment is CANCELLED once
# (one S), no attempt is left without an answer, and cancelled_at is the
# time the S was recorded, after the attempt was made.
#
# 5. a slow owner's trigger on the bound orders table and statement_timeout
#    = 3000ms: the timeout fires while an answer is applied; the run stops
#    at once (the remaining answers are recorded without waiting for the
#    trigger), commits, and the CALL fails with the timeout's own error
#    instead of returning success.
#
# Run as root from the repository, with the rig up:  bash test/audit.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_audit
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_audit.XXXXXX)
BG_PIDS=()
N=96

cleanup() {
	local p
	for p in "${BG_PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	rm -rf "$TMP"
}
trap cleanup EXIT

# wait_server: the cluster accepts connections again (after kill -9), 60 s at most
wait_server() {
	local deadline=$(($(now_ms) + 60000))
	while [ "$(now_ms)" -lt $deadline ]; do
		q "$DB" "SELECT 1" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}

# run_backend PATTERN: pid of the backend running the processor for the ids
# with PATTERN, once it has calls in flight (wait_event Extension), 20 s at most
run_backend() {
	local deadline=$(($(now_ms) + 20000)) row=""
	while [ "$(now_ms)" -lt $deadline ]; do
		row=$(q "$DB" "SELECT pid FROM pg_stat_activity
			WHERE query LIKE '%run_cancellations(1000, ''5 min'')%' AND pid <> pg_backend_pid()
				AND wait_event_type = 'Extension' LIMIT 1")
		[ -n "$row" ] && break
		sleep 0.05
	done
	echo "$row"
}

# gw MODE: requests the gateway received for the mode's ids
gw() { grep -c "\"id\": \"slow-1500-audit-$1-[0-9]*-$TAG\"" "$RIG/gateway.jsonl"; }
# rows MODE: attempts on record for the mode's ids
rows() { q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'slow-1500-audit-$1-%-$TAG'"; }

echo "# setting up database $DB"
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }

# queue MODE: the mode's N cancellations, queued and committed
queue() {
	q "$DB" "SELECT count(*) FROM generate_series(1, $N) i,
		alipayplus_request_cancel(payment_request_id => 'slow-1500-audit-$1-' || i || '-$TAG')" >/dev/null
}

# park OTHER rows: only the mode's ids are due (earlier modes' rows, if any
# are left, are not served by this mode's run)
only_due() {
	q "$DB" "UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
		WHERE state = 'CANCELLING' AND sent_id NOT LIKE 'slow-1500-audit-$1-%-$TAG'" >/dev/null
}

# processor MODE [SETTINGS]: the processor in the background, its output in $TMP/MODE.out
processor() {
	$PGBIN/psql -X -q -d "$DB" >"$TMP/$1.out" 2>&1 <<SQL &
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SET alipayplus.max_concurrency = 64;
${2:-}
CALL alipayplus_run_cancellations(1000, '5 min') /* slow-1500-audit-$1 */;
\echo SQLSTATE=:SQLSTATE
\echo MESSAGE=:LAST_ERROR_MESSAGE
SQL
	BG_PIDS+=($!)
}

# rerun MODE: the processor again until the mode's rows are all settled (60 s at most)
rerun() {
	local deadline=$(($(now_ms) + 30000)) left
	while [ "$(now_ms)" -lt $deadline ]; do
		PGOPTIONS='-c alipayplus.max_concurrency=64' q "$DB" "CALL alipayplus_run_cancellations(1000, '1 min')" >/dev/null 2>&1
		left=$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations
			WHERE state = 'CANCELLING' AND sent_id LIKE 'slow-1500-audit-$1-%-$TAG'")
		[ "$left" = 0 ] && return 0
		sleep 0.3
	done
	return 1
}

# after_rerun MODE: the checks once the queue is done
after_rerun() {
	local m=$1
	if rerun "$m"; then
		ok "$m: a rerun settled every row"
	else
		not_ok "$m: rows still CANCELLING after 60 s of reruns"
	fi
	expect "$m: after the rerun, the gateway's requests for the ids = the attempts on record" \
		"$(gw "$m")" "$(rows "$m")"
	expect "$m: every payment CANCELLED, each by exactly one S, nothing flagged" "$N|$N|0" \
		"$(q "$DB" "SELECT count(*) FILTER (WHERE state = 'CANCELLED') || '|' ||
			(SELECT count(*) FROM alipayplus.cancel_attempts a WHERE a.result_status = 'S'
				AND a.sent_id LIKE 'slow-1500-audit-$m-%-$TAG') || '|' ||
			count(*) FILTER (WHERE needs_attention)
			FROM alipayplus.cancellations WHERE sent_id LIKE 'slow-1500-audit-$m-%-$TAG'")"
	expect "$m: no attempt is left without an answer" 0 \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts
			WHERE result_code = 'local.no_answer_yet' AND sent_id LIKE 'slow-1500-audit-$m-%-$TAG'")"
	expect "$m: cancelled_at is when the S was recorded (1.5 s after its attempt started), not before" 0 \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations c
			JOIN alipayplus.cancel_attempts a ON a.cancellation_id = c.cancellation_id AND a.result_status = 'S'
			WHERE c.sent_id LIKE 'slow-1500-audit-$m-%-$TAG'
				AND (c.cancelled_at < a.attempted_at + interval '1 second' OR c.cancelled_at < a.completed_at
					 OR c.cancelled_at > a.completed_at + interval '1 second')")"
	expect "$m: the same parameters on every request (one sent id per ledger row)" 0 \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts a JOIN alipayplus.cancellations c USING (cancellation_id)
			WHERE c.sent_id LIKE 'slow-1500-audit-$m-%-$TAG' AND (a.sent_id, a.sent_field) IS DISTINCT FROM (c.sent_id, c.sent_field)")"
}

# last_run MODE: the stopped_because of the run interrupted in this mode
# (the first run that made attempts for its ids)
last_run() {
	q "$DB" "SELECT coalesce(p.stopped_because, '(no row)') || '|' || (p.finished_at IS NULL)
		FROM (SELECT min(run_id) AS run_id FROM alipayplus.cancel_attempts
			  WHERE sent_id LIKE 'slow-1500-audit-$1-%-$TAG') a
		LEFT JOIN alipayplus.processor_runs p ON p.run_id = a.run_id"
}

# ---------------------------------------------------------------------------
for mode in cancel terminate kill9; do
	echo "# $mode half a second into a window of 64 calls in flight"
	queue $mode
	only_due $mode
	processor $mode
	bg=$!
	pid=$(run_backend "slow-1500-audit-$mode")
	if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
		not_ok "$mode: no processor backend with calls in flight"
		q "$DB" "SELECT pid, state, wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity WHERE datname = '$DB'" | sed 's/^/#   /'
		sed 's/^/#   /' "$TMP/$mode.out"
		continue
	fi
	sleep 0.5
	case $mode in
		cancel) q "$DB" "SELECT pg_cancel_backend($pid)" >/dev/null ;;
		terminate) q "$DB" "SELECT pg_terminate_backend($pid)" >/dev/null ;;
		kill9) kill -9 "$pid" ;;
	esac
	if wait_exit "$bg" 20; then
		ok "$mode: the processor's session ended"
	else
		not_ok "$mode: the processor's session still runs 20 s after the $mode"
	fi
	[ $mode = kill9 ] && { wait_server || not_ok "kill9: the cluster did not come back"; }
	sed 's/^/#   /' "$TMP/$mode.out"
	# the first window's 64 requests had all left; the gateway logs a request when it arrives
	expect "$mode: the gateway received the window's 64 requests" 64 "$(gw $mode)"
	expect "$mode: before a rerun, the gateway's requests for the ids = the attempts on record" \
		"$(gw $mode)" "$(rows $mode)"
	if grep -q "gateway did not answer" "$TMP/$mode.out"; then
		not_ok "$mode: the error blames the gateway"
	else
		ok "$mode: no error blames the gateway"
	fi
	case $mode in
		cancel)
			expect "cancel: the CALL fails with the cancel's own error" 57014 "$(line_value "$TMP/$mode.out" SQLSTATE)"
			expect "cancel: its message" "canceling statement due to user request" \
				"$(line_value "$TMP/$mode.out" MESSAGE)"
			expect "cancel: the run's row says it was interrupted, and finished" \
				"interrupted: canceling statement due to user request|false" "$(last_run cancel)"
			expect "cancel: the window's calls are recorded as U local.interrupted" 64 \
				"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_status = 'U'
					AND result_code = 'local.interrupted' AND sent_id LIKE 'slow-1500-audit-cancel-%-$TAG'")"
			;;
		terminate | kill9)
			expect "$mode: before a rerun, the window's attempts wait for an answer" 64 \
				"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code = 'local.no_answer_yet'
					AND sent_id LIKE 'slow-1500-audit-$mode-%-$TAG'")"
			;;
	esac
	after_rerun $mode
	case $mode in
		terminate | kill9)
			expect "$mode: the run's row says its backend ended unfinished" \
				"ended unfinished: its backend exited during the run (pg_terminate_backend, a crash or kill); its calls without an answer are recorded as local.crashed|true" \
				"$(last_run $mode)"
			expect "$mode: the window's calls were completed as U local.crashed" 64 \
				"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_status = 'U'
					AND result_code = 'local.crashed' AND sent_id LIKE 'slow-1500-audit-$mode-%-$TAG'")"
			;;
	esac
done

# ---------------------------------------------------------------------------
echo "# statement_timeout = 1800ms with answers that take 1.5 s"
mode=stimeout
queue $mode
only_due $mode
processor $mode "SET statement_timeout = '1800ms';"
bg=$!
if wait_exit "$bg" 20; then
	ok "stimeout: the processor's session ended"
else
	not_ok "stimeout: the processor's session still runs after 20 s"
fi
sed 's/^/#   /' "$TMP/$mode.out"
expect "stimeout: the CALL ends without an error (it stopped before statement_timeout)" 00000 \
	"$(line_value "$TMP/$mode.out" SQLSTATE)"
if grep -q "gateway did not answer" "$TMP/$mode.out"; then
	not_ok "stimeout: the error blames the gateway"
else
	ok "stimeout: no error blames the gateway"
fi
expect "stimeout: before a rerun, the gateway's requests for the ids = the attempts on record" \
	"$(gw $mode)" "$(rows $mode)"
n=$(gw $mode)
if [ "$n" -ge 64 ]; then
	ok "stimeout: the gateway received at least the first window's 64 requests ($n)"
else
	not_ok "stimeout: the gateway received $n requests, fewer than the first window's 64"
fi
expect "stimeout: every call was cut short by the timeout: U local.statement_timeout, never the gateway's local.timeout" \
	"$n|0" \
	"$(q "$DB" "SELECT count(*) FILTER (WHERE result_code = 'local.statement_timeout') || '|' ||
		count(*) FILTER (WHERE result_code = 'local.timeout')
		FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'slow-1500-audit-stimeout-%-$TAG'")"
case "$(last_run $mode)" in
	"statement_timeout near|false" | "nothing due|false") ok "stimeout: the run's row is finished: $(last_run $mode)" ;;
	*) not_ok "stimeout: the run's row should be finished with 'statement_timeout near' or 'nothing due', not '$(last_run $mode)'" ;;
esac
after_rerun $mode

# ---------------------------------------------------------------------------
echo "# a slow owner's trigger, statement_timeout = 3000ms: the timeout fires while answers are applied"
q "$DB" "UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day' WHERE state = 'CANCELLING'" >/dev/null
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || not_ok "slow trigger: set up"
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION slow_trigger() RETURNS trigger LANGUAGE plpgsql AS
\$\$ BEGIN IF NEW.st = 'CANCELLED' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END \$\$;
CREATE TRIGGER slow BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION slow_trigger();
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders (req) SELECT 'slow-100-trig-' || i || '-$TAG' FROM generate_series(1, 32) i;
SELECT count(*) FROM generate_series(1, 32) i,
	alipayplus_request_cancel(payment_request_id => 'slow-100-trig-' || i || '-$TAG');
SQL
t0=$(now_ms)
$PGBIN/psql -X -q -d "$DB" >"$TMP/trig.out" 2>&1 <<SQL
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SET alipayplus.max_concurrency = 64;
SET statement_timeout = '3000ms';
CALL alipayplus_run_cancellations(1000, '5 min');
\echo SQLSTATE=:SQLSTATE
\echo MESSAGE=:LAST_ERROR_MESSAGE
SQL
el=$(($(now_ms) - t0))
sed 's/^/#   /' "$TMP/trig.out"
expect "slow trigger: the CALL fails with the timeout's own error" 57014 "$(line_value "$TMP/trig.out" SQLSTATE)"
expect "slow trigger: its message" "canceling statement due to statement timeout" \
	"$(line_value "$TMP/trig.out" MESSAGE)"
if [ "$el" -lt 4500 ]; then
	ok "slow trigger: the CALL ended ${el} ms after it started (statement_timeout 3 s, bound 3 s + 1.5 s)"
else
	not_ok "slow trigger: the CALL ran ${el} ms, past statement_timeout 3 s + 1.5 s"
fi
expect "slow trigger: every request is on record, answered" "$(grep -c "\"id\": \"slow-100-trig-[0-9]*-$TAG\"" "$RIG/gateway.jsonl")|0" \
	"$(q "$DB" "SELECT count(*) || '|' || count(*) FILTER (WHERE result_code LIKE 'local.%')
		FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'slow-100-trig-%-$TAG'")"
expect "slow trigger: every answer S kept: the ledger rows are CANCELLED (those not applied to the order are flagged)" 32 \
	"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED' AND sent_id LIKE 'slow-100-trig-%-$TAG'")"
expect "slow trigger: the run's row says it was interrupted" \
	"interrupted: canceling statement due to statement timeout|false" \
	"$(q "$DB" "SELECT p.stopped_because || '|' || (p.finished_at IS NULL) FROM alipayplus.processor_runs p
		WHERE p.run_id = (SELECT min(run_id) FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'slow-100-trig-%-$TAG')")"

finish
