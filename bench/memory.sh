#!/usr/bin/env bash
# bench/memory.sh [CALLS] [BATCH] [MODES]: memory and throughput of signed
# cancelPayment calls in ONE backend, against the rig's fake gateway.
#
# Sets up the rig (scripts/lib.sh), then for each mode in MODES (default
# "call processor") issues CALLS (default 100000) calls in one session,
# BATCH (default 5000) per statement:
#   call       alipayplus._call_cancel(), the C call alone (no ledger)
#   cancel     alipayplus_cancel_payment(), one by one, ledger included
#   processor  alipayplus_request_cancel_all() queues BATCH payments, then
#              alipayplus_process_cancellations() calls them, many in flight
# After each batch it prints the backend's private resident memory (RssAnon:
# its heap, including libcurl's and OpenSSL's malloc'd memory, but not the
# shared buffers it touches, which VmRSS counts and which grow with the
# ledger tables up to shared_buffers), the bytes held by its memory
# contexts, and the calls per second of the batch.  Memory should
# level off after the first batch (connection, TLS session, key cache,
# prepared ledger statements) and stay flat; the numbers go in the issue
# notes and README, not in tests.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

CALLS=${1:-100000}
BATCH=${2:-5000}
MODES=${3:-call processor}
rig_up
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
psql_rig -q -d bench -c "CREATE EXTENSION alipayplus_cancel"

batch_sql() {	# mode tag count
	case $1 in
	call) echo "SELECT count(*) FROM generate_series(1, $3) g,
		LATERAL alipayplus._call_cancel(NULL, '$2-' || g) c
		WHERE c.result_status = 'S' AND c.result_code = 'SUCCESS';" ;;
	cancel) echo "SELECT count(*) FROM generate_series(1, $3) g,
		LATERAL alipayplus_cancel_payment(payment_request_id => '$2-' || g) c
		WHERE c.result_status = 'S' AND c.state = 'CANCELLED';" ;;
	processor) echo "SELECT count(*) FROM alipayplus_request_cancel_all(
			ARRAY(SELECT '$2-' || g FROM generate_series(1, $3) g)) \\g /dev/null
		SELECT cancelled FROM alipayplus_process_cancellations($3, '1 hour');" ;;
	esac
}

for mode in $MODES; do
	say "$mode: $CALLS calls, $BATCH per statement"
	coproc PSQL { $PGBIN/psql -X -qAt -d bench 2>&1; }
	pid=$(ask "SELECT pg_backend_pid();")
	ask "$(batch_sql "$mode" "warmup-$mode-$RANDOM" 1)" >/dev/null
	rss() { awk '/RssAnon/ {print $2}' /proc/"$pid"/status; }
	ctx="SELECT sum(total_bytes) FROM pg_backend_memory_contexts;"
	printf '%8s %10s %12s %10s\n' calls private_kB context_B calls/s
	printf '%8s %10s %12s %10s\n' 0 "$(rss)" "$(ask "$ctx")" -
	done=0
	while [ "$done" -lt "$CALLS" ]; do
		start=$(date +%s.%N)
		ok=$(ask "$(batch_sql "$mode" "bench-$mode-$RANDOM-$done" "$BATCH")")
		end=$(date +%s.%N)
		[ "$ok" = "$BATCH" ] || { echo "only $ok of $BATCH calls succeeded: $ok" >&2; exit 1; }
		done=$((done + BATCH))
		printf '%8s %10s %12s %10.0f\n' "$done" "$(rss)" "$(ask "$ctx")" \
			"$(awk -v b="$BATCH" -v s="$start" -v e="$end" 'BEGIN {print b / (e - s)}')"
	done
	echo "\\q" >&"${PSQL[1]}"
	wait "$PSQL_PID" 2>/dev/null || true
done
rig_stop
