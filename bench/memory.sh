#!/usr/bin/env bash
# bench/memory.sh [CALLS] [BATCH]: memory and throughput of signed
# cancelPayment calls in ONE backend, against the rig's fake gateway.
#
# Sets up the rig (scripts/lib.sh), then issues CALLS (default 100000)
# calls of alipayplus._call_cancel() in one session, BATCH (default 5000)
# per statement, and after each batch prints the backend's resident set
# size (VmRSS, which includes libcurl's and OpenSSL's malloc'd memory), the
# bytes held by its memory contexts, and the calls per second of the batch.
# Memory should level off after the first batch (connection, TLS session,
# key cache) and stay flat; the numbers go in the issue notes, not in tests.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

CALLS=${1:-100000}
BATCH=${2:-5000}
rig_up
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
psql_rig -q -d bench -c "CREATE EXTENSION alipayplus_cancel"

coproc PSQL { $PGBIN/psql -X -qAt -d bench 2>&1; }

pid=$(ask "SELECT pg_backend_pid();")
ask "SELECT count(*) FROM alipayplus._call_cancel(NULL, 'warmup');" >/dev/null
rss() { awk '/VmRSS/ {print $2}' /proc/"$pid"/status; }
ctx="SELECT sum(total_bytes) FROM pg_backend_memory_contexts;"
printf '%8s %10s %12s %10s\n' calls rss_kB context_B calls/s
printf '%8s %10s %12s %10s\n' 0 "$(rss)" "$(ask "$ctx")" -
done=0
while [ "$done" -lt "$CALLS" ]; do
	start=$(date +%s.%N)
	ok=$(ask "SELECT count(*) FROM generate_series(1, $BATCH) g,
		LATERAL alipayplus._call_cancel(NULL, 'bench-$done-' || g) c
		WHERE c.result_status = 'S' AND c.result_code = 'SUCCESS';")
	end=$(date +%s.%N)
	[ "$ok" = "$BATCH" ] || { echo "only $ok of $BATCH calls succeeded" >&2; exit 1; }
	done=$((done + BATCH))
	printf '%8s %10s %12s %10.0f\n' "$done" "$(rss)" "$(ask "$ctx")" \
		"$(awk -v b="$BATCH" -v s="$start" -v e="$end" 'BEGIN {print b / (e - s)}')"
done
echo "\\q" >&"${PSQL[1]}"
rig_stop
