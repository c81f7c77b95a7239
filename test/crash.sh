#!/usr/bin/env bash
# test/crash.sh: queued cancellations survive crashes in the middle of a
# gateway call, and nothing is lost or doubled.
#
# It leaves the main rig cluster alone: it makes its own throwaway cluster
# in $RIG/crash (port 54331, unix socket only), configured like
# rig_cluster (scripts/lib.sh) for the same running gateway and keys.  Each
# round queues N cancellations whose gateway answer takes 3 s
# ("slow-3000-crash-..."), starts alipayplus_process_cancellations() and,
# about a second in, while the first call waits on the gateway:
#
# 1. kill -9 the backend: the postmaster resets; after it accepts
#    connections again the N rows are all still CANCELLING with no
#    attempt recorded (the run's transaction never committed); a full run
#    then cancels all N, one ledger row and one attempt each.
# 2. kill -9 the postmaster: the orphaned backend notices within its 100 ms
#    poll slice and exits (FATAL), as do the other processes; after
#    pg_ctl start the same checks hold.
#
# The gateway may have seen a request twice (the killed one and the retry);
# Alipay+ cancelPayment is idempotent, and the ledger records only the
# attempts that committed.  Run as root:  bash test/crash.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

CRASH=$RIG/crash
CPGDATA=$CRASH/pgdata
CPORT=54331
DB=apc_crash
N=5
TAG=$(date +%s%N)
BG_PIDS=()
ORPHANS=()

# every psql below goes to the crash cluster, never to the main one
export PGHOST=$CRASH PGPORT=$CPORT PGUSER=postgres PGDATABASE=postgres


pg_ctl_crash() { as_postgres $PGBIN/pg_ctl -D "$CPGDATA" "$@"; }

cleanup() {
	local p
	for p in "${BG_PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	if [ -f "$CPGDATA/postmaster.pid" ]; then
		pg_ctl_crash -m immediate stop >/dev/null 2>&1
	fi
	# backends orphaned by the postmaster kill, if a check already failed
	for p in "${ORPHANS[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
}
trap cleanup EXIT

# accepting SECONDS: wait until the crash cluster runs queries again
accepting() {
	local deadline=$(($(now_ms) + $1 * 1000))
	while [ "$(now_ms)" -lt $deadline ]; do
		[ "$(q "$DB" "SELECT 1" 2>/dev/null)" = 1 ] && return 0
		sleep 0.1
	done
	return 1
}

# running PID: the process exists and is not a zombie (orphans are reaped
# by init, which may take a while; a zombie has already exited)
running() {
	local st
	st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[[ "$st" != Z* ]]
}

# wait_exit PID SECONDS: wait for a process to end; false on timeout
wait_exit() {
	local deadline=$(($(now_ms) + $2 * 1000))
	while running "$1"; do
		[ "$(now_ms)" -lt $deadline ] || return 1
		sleep 0.05
	done
	return 0
}

# processor_waiting: pid of the backend running the processor, once it
# waits on the gateway (10 s at most); empty if none
processor_waiting() {
	local deadline=$(($(now_ms) + 10000)) pid=""
	while [ "$(now_ms)" -lt $deadline ]; do
		pid=$(q "$DB" "SELECT pid FROM pg_stat_activity
			WHERE query LIKE '%alipayplus_process_cancellations(%' AND pid <> pg_backend_pid()
				AND state = 'active' AND wait_event_type = 'Extension' LIMIT 1" 2>/dev/null)
		[ -n "$pid" ] && break
		sleep 0.05
	done
	echo "$pid"
}

# ids FIRST LAST: the quoted, comma-separated ids FIRST..LAST
ids() {
	local n out=""
	for n in $(seq "$1" "$2"); do
		out+="${out:+, }'slow-3000-crash-$TAG-$n'"
	done
	echo "$out"
}

# ledger FIRST LAST: "rows|cancelling|cancelled|attempt_count sum|attempt rows|
# rows whose attempt_count differs from their attempt rows" for ids FIRST..LAST
ledger() {
	q "$DB" "SELECT count(*) || '|' || count(*) FILTER (WHERE state = 'CANCELLING')
		|| '|' || count(*) FILTER (WHERE state = 'CANCELLED')
		|| '|' || coalesce(sum(attempt_count), 0)
		|| '|' || coalesce(sum(a.n), 0)
		|| '|' || count(*) FILTER (WHERE attempt_count <> a.n)
		FROM alipayplus.cancellations c,
			LATERAL (SELECT count(*) AS n FROM alipayplus.cancel_attempts x
					 WHERE x.cancellation_id = c.cancellation_id) a
		WHERE payment_request_id IN ($(ids "$1" "$2"))"
}

# gateway_check FIRST LAST WHAT: every id was seen by the gateway, one of
# them (the killed call) at least twice
gateway_check() {
	local n c total=0 missing=0 twice=0
	for n in $(seq "$1" "$2"); do
		c=$(grep -c "\"id\": \"slow-3000-crash-$TAG-$n\"" "$RIG/gateway.jsonl")
		total=$((total + c))
		[ "$c" -ge 1 ] || missing=$((missing + 1))
		[ "$c" -ge 2 ] && twice=$((twice + 1))
	done
	expect "$3: the gateway logged every id at least once" 0 "$missing"
	if [ "$twice" -ge 1 ]; then
		ok "$3: the killed call had reached the gateway ($total requests for $N ids; cancelPayment is idempotent)"
	else
		not_ok "$3: no id was requested twice ($total requests): the kill did not hit a call in flight"
	fi
}

# round NAME FIRST LAST: queue ids FIRST..LAST and start the processor in
# the background; sets BG and BACKEND
round_start() {
	expect "$1: $N cancellations queued" "$N" \
		"$(q "$DB" "SELECT count(*) FROM unnest(ARRAY[$(ids "$2" "$3")]) AS i,
			LATERAL alipayplus_request_cancel(payment_request_id => i)")"
	START_MS=$(now_ms)
	$PGBIN/psql -X -q -d "$DB" -v VERBOSITY=verbose \
		-c "SELECT * FROM alipayplus_process_cancellations()" >"$CRASH/$1.out" 2>&1 &
	BG=$!
	BG_PIDS+=("$BG")
	BACKEND=$(processor_waiting)
	if [[ "$BACKEND" =~ ^[0-9]+$ ]]; then
		ok "$1: processor backend $BACKEND waits on the gateway (wait_event_type Extension)"
	else
		not_ok "$1: found no processor backend waiting on the gateway"
	fi
	# about a second into the run, well inside the first 3 s call
	local left=$((START_MS + 1000 - $(now_ms)))
	[ $left -gt 0 ] && sleep "$(printf '0.%03d' $left)"
}

# round_finish NAME FIRST LAST: the checks after the cluster is back
round_finish() {
	local r
	expect "$1: after the crash all $N rows are still CANCELLING, no attempt recorded" \
		"$N|$N|0|0|0|0" "$(ledger "$2" "$3")"
	expect "$1: the killed run left no processor_runs row" "$4" \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.processor_runs")"
	r=$(q "$DB" "SELECT claimed || '|' || cancelled || '|' || retrying || '|' || attention
		FROM alipayplus_process_cancellations($N * 3, '60 seconds')")
	expect "$1: a full run claims and cancels all $N" "$N|$N|0|0" "$r"
	expect "$1: all $N CANCELLED, one ledger row and exactly one committed attempt each" \
		"$N|0|$N|$N|$N|0" "$(ledger "$2" "$3")"
	expect "$1: one ledger row per id (no doubles)" "$N" \
		"$(q "$DB" "SELECT count(DISTINCT payment_request_id) FROM alipayplus.cancellations
			WHERE payment_request_id IN ($(ids "$2" "$3"))")"
	expect "$1: every recorded attempt is an S SUCCESS" "$N" \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts
			WHERE sent_id IN ($(ids "$2" "$3")) AND result_status = 'S' AND result_code = 'SUCCESS'")"
	gateway_check "$2" "$3" "$1"
}

# ---------------------------------------------------------------------------
echo "# setting up a throwaway cluster in $CRASH on port $CPORT"
if [ -f "$CPGDATA/postmaster.pid" ]; then
	pg_ctl_crash -m immediate stop >/dev/null 2>&1
fi
rm -rf "$CRASH"
mkdir -p "$CRASH"
chown postgres:postgres "$CRASH"
init_cluster "$CPGDATA" "$CPORT" "$CRASH" <<<"restart_after_crash = on" ||
	{ not_ok "initdb"; finish; }
pg_ctl_crash -l "$CRASH/postgres.log" -w start >/dev/null || { not_ok "start the crash cluster"; finish; }
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }
ok "crash cluster up (main cluster untouched)"

# ---------------------------------------------------------------------------
echo "# 1. kill -9 of the backend in the middle of a gateway call"
round_start "backend kill" 1 $N
if [[ "$BACKEND" =~ ^[0-9]+$ ]]; then
	kill -9 "$BACKEND"
	ok "backend kill: sent SIGKILL to $BACKEND $(($(now_ms) - START_MS)) ms into the run"
fi
wait_exit "$BG" 10 || not_ok "backend kill: the client still runs 10 s after the kill"
sed 's/^/#   /' "$CRASH/backend kill.out"
if accepting 30; then
	ok "backend kill: the cluster accepts connections again"
else
	not_ok "backend kill: the cluster does not accept connections 30 s after the kill"
	finish
fi
if grep -q "server process (PID $BACKEND) was terminated by signal 9" "$CRASH/postgres.log"; then
	ok "backend kill: the postmaster saw the crash and reset"
else
	not_ok "backend kill: no 'server process (PID $BACKEND) was terminated by signal 9' in the log"
fi
round_finish "backend kill" 1 $N 0

# ---------------------------------------------------------------------------
echo "# 2. kill -9 of the postmaster in the middle of a gateway call"
round_start "postmaster kill" $((N + 1)) $((2 * N))
PM=$(head -n 1 "$CPGDATA/postmaster.pid")
ORPHANS=($(ps -o pid= --ppid "$PM"))
if [[ "$PM" =~ ^[0-9]+$ ]] && kill -9 "$PM"; then
	ok "postmaster kill: sent SIGKILL to postmaster $PM $(($(now_ms) - START_MS)) ms into the run (${#ORPHANS[@]} children)"
else
	not_ok "postmaster kill: could not kill the postmaster '$PM'"
fi
t0=$(now_ms)
if [[ "$BACKEND" =~ ^[0-9]+$ ]] && wait_exit "$BACKEND" 1; then
	ok "postmaster kill: the backend in the gateway call exited $(($(now_ms) - t0)) ms after the postmaster died (< 1 s; its call had ~2 s to go)"
else
	not_ok "postmaster kill: the backend $BACKEND in the gateway call still runs 1 s after the postmaster died"
fi
left=()
for p in "${ORPHANS[@]}"; do
	wait_exit "$p" 5 || left+=("$p")
done
if [ ${#left[@]} -eq 0 ]; then
	ok "postmaster kill: all ${#ORPHANS[@]} orphaned processes exited within 5 s ($(($(now_ms) - t0)) ms)"
else
	not_ok "postmaster kill: processes still alive 5 s after the postmaster died: $(ps -o pid=,args= -p "$(
		IFS=,
		echo "${left[*]}"
	)" | tr '\n' ';')"
	for p in "${left[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
	sleep 0.5
fi
wait_exit "$BG" 5 || not_ok "postmaster kill: the client still runs 5 s after the postmaster died"
sed 's/^/#   /' "$CRASH/postmaster kill.out"
if grep -q "terminating connection because the postmaster died during an Alipay+ call" \
	"$CRASH/postgres.log" "$CRASH/postmaster kill.out"; then
	ok "postmaster kill: the backend reported the postmaster's death (FATAL from the extension)"
else
	not_ok "postmaster kill: no 'terminating connection because the postmaster died during an Alipay+ call' in the log or client output"
fi
# The dead postmaster stays a zombie until init reaps it, and a new
# postmaster refuses to start while the pid in postmaster.pid answers
# kill(pid, 0), as a zombie does.  Wait for the reaping; should this VM's
# init not reap in time, drop the stale lock file of the (provably dead)
# zombie instead.
deadline=$(($(now_ms) + 10000))
while kill -0 "$PM" 2>/dev/null && [ "$(now_ms)" -lt $deadline ]; do
	sleep 0.1
done
if kill -0 "$PM" 2>/dev/null && ! running "$PM"; then
	echo "# postmaster $PM is still an unreaped zombie; removing its stale postmaster.pid"
	rm -f "$CPGDATA/postmaster.pid"
fi
if pg_ctl_crash -l "$CRASH/postgres.log" -w start >/dev/null 2>&1 && accepting 30; then
	ok "postmaster kill: pg_ctl start brought the cluster back"
else
	not_ok "postmaster kill: the cluster did not come back (see $CRASH/postgres.log)"
	tail -n 20 "$CRASH/postgres.log" | sed 's/^/#   /'
	finish
fi
ORPHANS=()
round_finish "postmaster kill" $((N + 1)) $((2 * N)) 1
expect "first round's rows unchanged by the second crash" "$N|0|$N|$N|$N|0" "$(ledger 1 $N)"
expect "exactly the two completed runs are in processor_runs" 2 \
	"$(q "$DB" "SELECT count(*) FROM alipayplus.processor_runs")"

# ---------------------------------------------------------------------------
if pg_ctl_crash -m fast -w stop >/dev/null; then
	ok "crash cluster stopped"
else
	not_ok "stop the crash cluster"
fi
[ "$checks_failed" -eq 0 ] && rm -rf "$CRASH"
finish
