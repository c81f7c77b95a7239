#!/usr/bin/env bash
# test/resolve_interrupts.sh: CALL alipayplus_resolve_backlog() under the
# engine's interrupt rules (issue 15 on the pipeline of issue 16).
#
# Three resolutions, two inquiries in flight at a time: two paid ones,
# answered at once, and one whose inquiry hangs (the gateway takes 30 s).
# While it waits: another session already sees the paid ones decided
# (committed as it goes) and the backlog has reported its progress.  A
# query cancel then stops the hanging inquiry promptly: it is on record as
# U local.interrupted, it decides nothing (the resolution is due again),
# the run says it was interrupted, 57014 follows.  A pg_terminate_backend:
# the inquiry stays "no answer yet" until the next claim completes it as
# local.crashed and the run of the ended backend reads ended unfinished.
# Needs the rig up.
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

DB=apc_resolve_interrupts
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_resolve_int.XXXXXX)
BG_PIDS=()
cleanup() {
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

# the pid of the backend running the backlog once its slow inquiry is at
# the gateway (15 s at most); empty if none
slow_inquiry_waiting() {
	local name=$1 deadline=$(($(now_ms) + 15000)) pid=""
	while [ "$(now_ms)" -lt $deadline ]; do
		if grep -q "slow-30000-ri-$name-$TAG" "$RIG/gateway.jsonl"; then
			pid=$(q "$DB" "SELECT pid FROM pg_stat_activity WHERE query LIKE '%alipayplus_resolve_backlog%'
				AND pid <> pg_backend_pid() AND wait_event_type = 'Extension' LIMIT 1")
			[ -n "$pid" ] && break
		fi
		sleep 0.05
	done
	echo "$pid"
}

# run_case NAME SIGNAL_FUNCTION
run_case() {
	local name=$1 signal=$2 pid t_sig t_end
	for id in paid-ri-$name-1-$TAG paid-ri-$name-2-$TAG slow-30000-ri-$name-$TAG; do
		q "$DB" "INSERT INTO ri_orders (req) VALUES ('$id')" >/dev/null
		q "$DB" "SELECT alipayplus_request_resolve(payment_request_id => '$id', inquiry_total => '1 hour')" >/dev/null
	done
	{
		echo "SET alipayplus.max_concurrency = 2;"
		echo "SET alipayplus.timeout_ms = 60000;"
		echo "CALL alipayplus_resolve_backlog(progress => '0 s');"
		echo "\\echo AFTER=:SQLSTATE"
	} | $PGBIN/psql -X -q -d "$DB" -v VERBOSITY=verbose -P tuples_only=on -P format=unaligned \
		>"$TMP/$name.out" 2>&1 &
	local bg=$!
	BG_PIDS+=("$bg")

	pid=$(slow_inquiry_waiting "$name")
	if [ -z "$pid" ]; then
		not_ok "$name: the backlog never waited on the slow inquiry"
		return
	fi
	# the paid ones are settled in a step of their own (within a second)
	local deadline=$(($(now_ms) + 5000))
	while [ "$(now_ms)" -lt $deadline ] &&
		[ "$(q "$DB" "SELECT count(*) FROM alipayplus.resolutions WHERE sent_id LIKE 'paid-ri-$name-%' AND state = 'PAID'")" != 2 ]; do
		sleep 0.05
	done
	expect "$name: another session sees the paid ones decided while the backlog waits" \
		"paid-ri-$name-1:PAID paid-ri-$name-2:PAID slow-30000-ri-$name:RESOLVING" \
		"$(q "$DB" "SELECT string_agg(split_part(sent_id, '-$TAG', 1) || ':' || state, ' ' ORDER BY resolution_id)
			FROM alipayplus.resolutions WHERE sent_id LIKE '%ri-$name-%'")"

	t_sig=$(now_ms)
	q postgres "SELECT $signal($pid)" >/dev/null
	if wait_exit "$bg" 10; then
		t_end=$(now_ms)
		if [ $((t_end - t_sig)) -lt 3000 ]; then
			ok "$name: the session answered $((t_end - t_sig)) ms after $signal (< 3 s, the inquiry hangs for 30 s)"
		else
			not_ok "$name: the session answered only $((t_end - t_sig)) ms after $signal"
		fi
	else
		not_ok "$name: the session still runs 10 s after $signal"
	fi
	sed 's/^/#   /' "$TMP/$name.out"
	if grep -q "NOTICE:  .*resolving: 2 paid, 0 failed, .* still unknown; .* inquiries, .* per second" "$TMP/$name.out"; then
		ok "$name: the backlog reported its progress"
	else
		not_ok "$name: no progress NOTICE in the output"
	fi
	if [ "$name" = cancel ]; then
		expect "$name: SQLSTATE" "AFTER=57014" "$(grep '^AFTER=' "$TMP/$name.out")"
		expect "$name: the inquiry that left is on record, U local.interrupted, and decided nothing" \
			"1|local.interrupted|RESOLVING|t" \
			"$(q "$DB" "SELECT count(*), string_agg(i.result_status || ' ' || i.result_code, ','), r.state, r.next_inquiry_at <= now()
				FROM alipayplus.inquiries i JOIN alipayplus.resolutions r USING (resolution_id)
				WHERE i.sent_id = 'slow-30000-ri-$name-$TAG' GROUP BY r.state, r.next_inquiry_at" | sed 's/U local/local/')"
		expect "$name: the run says it was interrupted" \
			"interrupted: canceling statement due to user request" \
			"$(q "$DB" "SELECT stopped_because FROM alipayplus.processor_runs WHERE caller = 'alipayplus_resolve_backlog' ORDER BY run_id DESC LIMIT 1")"
		# out of the next case's way
		q "$DB" "UPDATE alipayplus.resolutions SET next_inquiry_at = now() + interval '1 day' WHERE sent_id = 'slow-30000-ri-$name-$TAG'" >/dev/null
	else
		expect "$name: the inquiry stays on record, no answer yet" "1|local.no_answer_yet" \
			"$(q "$DB" "SELECT count(*), string_agg(result_code, ',') FROM alipayplus.inquiries WHERE sent_id = 'slow-30000-ri-$name-$TAG'")"
		local gone=$(($(now_ms) + 10000))
		while [ "$(now_ms)" -lt $gone ] &&
			[ "$(q postgres "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid")" != 0 ]; do
			sleep 0.05
		done
		# the next claim (well before the lease of 70 s ends): the run's
		# backend is gone, so its inquiry is completed and asked again
		q "$DB" "SELECT inquired FROM alipayplus_process_resolutions(1, '0.5 s')" >/dev/null
		expect "$name: the next claim completes it as local.crashed and asks again" \
			"local.crashed:true local.time_budget:true" \
			"$(q "$DB" "SELECT string_agg(result_code || ':' || (completed_at IS NOT NULL), ' ' ORDER BY inquiry_id) FROM alipayplus.inquiries WHERE sent_id = 'slow-30000-ri-$name-$TAG'")"
		expect "$name: the run of the ended backend reads ended unfinished" "t" \
			"$(q "$DB" "SELECT stopped_because LIKE 'ended unfinished: its backend exited%' FROM alipayplus.processor_runs WHERE caller = 'alipayplus_resolve_backlog' ORDER BY run_id DESC LIMIT 1")"
		if grep -q "57P01" "$TMP/$name.out"; then
			ok "$name: the session ended with 57P01"
		else
			not_ok "$name: no 57P01 in the output"
		fi
	fi
}

echo "# setting up database $DB"
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }
# the resolver decides only for bound orders still pending
q "$DB" "CREATE TABLE ri_orders (req text PRIMARY KEY, status text NOT NULL DEFAULT 'PENDING');
	SELECT alipayplus_bind_orders('ri_orders', 'req', 'status', 'CANCELLED', 'CANCELLING',
		paid_value => 'PAID', failed_value => 'FAILED', pending_values => ARRAY['PENDING'])" >/dev/null ||
	{ not_ok "bind the orders"; finish; }

echo "# 1. a query cancel while an inquiry hangs"
run_case cancel pg_cancel_backend
echo "# 2. pg_terminate_backend while an inquiry hangs"
run_case terminate pg_terminate_backend

q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
finish
