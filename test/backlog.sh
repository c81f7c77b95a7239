#!/usr/bin/env bash
# test/backlog.sh: CALL alipayplus_process_backlog() commits as it goes.
#
# Six cancellations, two calls in flight at a time (three windows); the
# last window's two calls hang (the gateway takes 30 s).  While it waits:
# another session already sees the first two windows' cancellations, the
# gateway sees both calls of the window in flight at once, and the backlog
# has reported its progress.  Then a query cancel stops both calls
# promptly: the committed windows stay, the interrupted one's requests are
# on record (1.3), and the same session goes on working.  Then the same with
# pg_terminate_backend.  Needs the rig up.
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

DB=apc_backlog
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_backlog.XXXXXX)
BG_PIDS=()
cleanup() {
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

# backlog_waiting: pid of the backend running the backlog once it waits on
# the gateway (15 s at most); empty if none
backlog_waiting() {
	local deadline=$(($(now_ms) + 15000)) pid=""
	while [ "$(now_ms)" -lt $deadline ]; do
		pid=$(q "$DB" "SELECT pid FROM pg_stat_activity WHERE query LIKE '%alipayplus_process_backlog%'
			AND pid <> pg_backend_pid() AND wait_event_type = 'Extension' LIMIT 1")
		[ -n "$pid" ] && break
		sleep 0.05
	done
	echo "$pid"
}

queue() {
	local name=$1
	for i in 1 2 3 4; do
		q "$DB" "SELECT alipayplus_request_cancel(payment_request_id => 'bk-$name-$i-$TAG')" >/dev/null
	done
	for i in 5 6; do
		q "$DB" "SELECT alipayplus_request_cancel(payment_request_id => 'slow-30000-bk-$name-$i-$TAG')" >/dev/null
	done
}

# run_case NAME SIGNAL_FUNCTION
run_case() {
	local name=$1 signal=$2 pid t_sig t_end states
	queue "$name"
	{
		echo "SET alipayplus.max_concurrency = 2;"
		echo "SET alipayplus.timeout_ms = 60000;"
		echo "CALL alipayplus_process_backlog(progress => '0 s');"
		echo "\\echo AFTER=:SQLSTATE"
		echo "SELECT 'SAME_SESSION=' || result_status || '/' || state FROM alipayplus_cancel_payment(payment_request_id => 'bk-$name-after-$TAG');"
	} | $PGBIN/psql -X -q -d "$DB" -v VERBOSITY=verbose -P tuples_only=on -P format=unaligned \
		>"$TMP/$name.out" 2>&1 &
	local bg=$!
	BG_PIDS+=("$bg")

	pid=$(backlog_waiting)
	if [ -z "$pid" ]; then
		not_ok "$name: the backlog never waited on the gateway"
		return
	fi
	# wait until both slow calls are in flight
	local deadline=$(($(now_ms) + 10000))
	while [ "$(now_ms)" -lt $deadline ] &&
		[ "$(grep -c "slow-30000-bk-$name-[56]-$TAG" "$RIG/gateway.jsonl")" -lt 2 ]; do
		sleep 0.05
	done
	expect "$name: another session sees the two committed windows while the backlog runs" \
		"bk-$name-1:CANCELLED bk-$name-2:CANCELLED bk-$name-3:CANCELLED bk-$name-4:CANCELLED" \
		"$(q "$DB" "SELECT string_agg(split_part(sent_id, '-$TAG', 1) || ':' || state, ' ' ORDER BY cancellation_id)
			FROM alipayplus.cancellations WHERE sent_id LIKE 'bk-$name-%' AND sent_id NOT LIKE '%after%'")"
	# each takes 30 s to answer: both at the gateway while the run still
	# waits means both were in flight together
	expect "$name: both calls of the last window are in flight together" "2" \
		"$(grep -c "slow-30000-bk-$name-[56]-$TAG" "$RIG/gateway.jsonl")"

	t_sig=$(now_ms)
	q postgres "SELECT $signal($pid)" >/dev/null
	if wait_exit "$bg" 10; then
		t_end=$(now_ms)
		if [ $((t_end - t_sig)) -lt 3000 ]; then
			ok "$name: the session answered $((t_end - t_sig)) ms after $signal (< 3 s, calls hang for 30 s)"
		else
			not_ok "$name: the session answered only $((t_end - t_sig)) ms after $signal"
		fi
	else
		not_ok "$name: the session still runs 10 s after $signal"
	fi
	sed 's/^/#   /' "$TMP/$name.out"
	if grep -q "NOTICE:  .* done (.* cancelled), .* per second" "$TMP/$name.out"; then
		ok "$name: the backlog reported its progress"
	else
		not_ok "$name: no progress NOTICE in the output"
	fi
	states=$(q "$DB" "SELECT string_agg(split_part(sent_id, '-$TAG', 1) || ':' || state || ':' || attempt_count, ' ' ORDER BY cancellation_id)
		FROM alipayplus.cancellations WHERE sent_id LIKE '%bk-$name-%' AND sent_id NOT LIKE '%after%'")
	# the interrupted window's two requests had left: both are on record
	# (1.3), completed as U local.interrupted after a cancel (the retry
	# rules count it), still waiting for an answer after a terminate until
	# the next run sees the backend gone
	if [ "$name" = cancel ]; then
		n_after=1
		code=local.interrupted
	else
		n_after=0
		code=local.no_answer_yet
	fi
	expect "$name: the committed windows stay, the interrupted one's attempts are on record" \
		"bk-$name-1:CANCELLED:1 bk-$name-2:CANCELLED:1 bk-$name-3:CANCELLED:1 bk-$name-4:CANCELLED:1 slow-30000-bk-$name-5:CANCELLING:$n_after slow-30000-bk-$name-6:CANCELLING:$n_after" \
		"$states"
	expect "$name: the window in flight has one attempt per request the gateway saw, $code" "2|2" \
		"$(grep -c "slow-30000-bk-$name-[56]-$TAG" "$RIG/gateway.jsonl")|$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts
			WHERE sent_id LIKE 'slow-30000-bk-$name-%' AND result_code = '$code'")"
	expect "$name: the interrupted rows are still waiting (not flagged)" "2" \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE sent_id LIKE 'slow-30000-bk-$name-%' AND next_attempt_at IS NOT NULL AND NOT needs_attention")"
}

echo "# setting up database $DB"
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }

echo "# 1. a query cancel during the third window"
run_case cancel pg_cancel_backend
expect "cancel: SQLSTATE" "AFTER=57014" "$(grep '^AFTER=' "$TMP/cancel.out")"
expect "cancel: the same session then cancels a payment" "SAME_SESSION=S/CANCELLED" \
	"$(grep '^SAME_SESSION=' "$TMP/cancel.out")"

echo "# 2. pg_terminate_backend during the third window"
# (the first case's hanging ones wait for tomorrow, out of this case's way)
q "$DB" "UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day' WHERE sent_id LIKE 'slow-30000-bk-cancel-%'" >/dev/null
run_case terminate pg_terminate_backend
if grep -q "57P01" "$TMP/terminate.out"; then
	ok "terminate: the session ended with 57P01"
else
	not_ok "terminate: no 57P01 in the output"
fi

q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
finish
