#!/usr/bin/env bash
# test/backlog.sh: CALL alipayplus_process_backlog() commits as it goes.
#
# Six cancellations, two calls in flight at a time (three windows); the
# last window's two calls hang (the gateway takes 30 s).  While it waits:
# another session already sees the first two windows' cancellations, the
# gateway sees both calls of the window in flight at once, and the backlog
# has reported its progress.  Then a query cancel stops both calls
# promptly: the committed windows stay, the two requests that left are on
# record (U local.interrupted), and the same session goes on working.  Then
# the same with pg_terminate_backend: the requests stay "no answer yet"
# until the next run's claim completes them as local.crashed and says the
# run ended unfinished.  Needs the rig up.
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
	# issue 16: the requests that left are on record.  A query cancel: the
	# CALL records them as U local.interrupted before it fails; a
	# terminate: they stay "no answer yet" until the next run's claim
	# completes them as local.crashed.
	local n_attempts=1 code=local.interrupted
	[ "$name" = terminate ] && n_attempts=0 && code=local.no_answer_yet
	expect "$name: the committed work stays, the interrupted calls are on record" \
		"bk-$name-1:CANCELLED:1 bk-$name-2:CANCELLED:1 bk-$name-3:CANCELLED:1 bk-$name-4:CANCELLED:1 slow-30000-bk-$name-5:CANCELLING:$n_attempts slow-30000-bk-$name-6:CANCELLING:$n_attempts" \
		"$states"
	expect "$name: one attempt per request that left, $code" "2|$code" \
		"$(q "$DB" "SELECT count(*), string_agg(DISTINCT a.result_code, ',') FROM alipayplus.cancel_attempts a WHERE a.sent_id LIKE 'slow-30000-bk-$name-%'")"
	if [ "$name" = cancel ]; then
		expect "$name: the run says it was interrupted" \
			"interrupted: canceling statement due to user request" \
			"$(q "$DB" "SELECT stopped_because FROM alipayplus.processor_runs WHERE caller = 'alipayplus_process_backlog' AND finished_at IS NOT NULL ORDER BY run_id DESC LIMIT 1")"
	else
		# the next run's claim finds the attempts of the dead backend (once
		# it has left pg_stat_activity)
		local gone=$(($(now_ms) + 10000))
		while [ "$(now_ms)" -lt $gone ] &&
			[ "$(q postgres "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid")" != 0 ]; do
			sleep 0.05
		done
		q "$DB" "SELECT claimed FROM alipayplus_process_cancellations(1, '1 s')" >/dev/null
		expect "$name: the next claim completes them as local.crashed" "2|local.crashed" \
			"$(q "$DB" "SELECT count(*), string_agg(DISTINCT a.result_code, ',') FROM alipayplus.cancel_attempts a WHERE a.sent_id LIKE 'slow-30000-bk-$name-%'")"
		expect "$name: the run of the ended backend reads ended unfinished" "t" \
			"$(q "$DB" "SELECT stopped_because LIKE 'ended unfinished: its backend exited%' FROM alipayplus.processor_runs WHERE caller = 'alipayplus_process_backlog' ORDER BY run_id DESC LIMIT 1")"
	fi
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
