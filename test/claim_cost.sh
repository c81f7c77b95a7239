#!/usr/bin/env bash
# test/claim_cost.sh: what a call costs the ledger does not grow with the
# queue.  The pipeline claims a few rows each time answers come in (an
# eighth of its slots); each claim must read about the rows it takes, not
# the whole queue.  Found by bench/run.sh (issue 14): the background worker
# slowed from round to round, because each claim
#   - sorted every due row (the due index had next_attempt_at alone, and a
#     burst queued in one transaction shares one next_attempt_at), and
#   - for each of them scanned every call in flight (the index of calls in
#     flight was keyed by attempt id, so the planner, with the ledger's
#     statistics stale or missing, scanned it whole per row).
# 2000 rows queued in one transaction, no statistics (autovacuum off, never
# analyzed: the worker's case after a burst), served by the CALL form at
# 64 in flight; the blocks read from the extension's tables and indexes,
# per call, are counted by PostgreSQL's own statistics (pg_statio).  This
# is a count, not a timing.  Before the fix: about 300 a call; after, about
# 75.
#
# Run as root from the repository, with the rig up:  bash test/claim_cost.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_claim_cost
TAG=$(date +%s%N)
N=2000
# generous: a call reads and writes its ledger row, its attempt, their
# indexes and the run's row a few times each (about 40 with the fix)
LIMIT=150
scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }

blocks() {
	q "$DB" "SELECT pg_stat_clear_snapshot();
		SELECT sum(heap_blks_read + heap_blks_hit
				   + coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0))
		FROM pg_statio_user_tables WHERE schemaname = 'alipayplus'" | tail -n 1
}

q "$DB" "ALTER TABLE alipayplus.cancellations SET (autovacuum_enabled = off);
	ALTER TABLE alipayplus.cancel_attempts SET (autovacuum_enabled = off)" >/dev/null
q "$DB" "SELECT count(*) FROM alipayplus_request_cancel_all(ARRAY(
		SELECT 'slow-20-cc-$TAG-' || i FROM generate_series(1, $N) i))" >/dev/null
before=$(blocks)
out=$(PGOPTIONS="-c alipayplus.max_concurrency=64" $PGBIN/psql -X -qAt -d "$DB" \
	-c "CALL alipayplus_run_cancellations($N, '5 minutes')" 2>&1)
# the CALL's session has ended: its statistics are flushed
sleep 1
after=$(blocks)
done_n=$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED'")
expect "the CALL form cancelled all $N rows" "$N" "$done_n"
[ -z "$out" ] || echo "# CALL said: $out"
per_call=$(( (after - before) / (done_n > 0 ? done_n : 1) ))
echo "# blocks read from the ledger's tables and indexes: $((after - before)), $per_call a call"
if [ "$per_call" -le "$LIMIT" ]; then
	ok "a call reads $per_call blocks of the ledger (at most $LIMIT), with $N queued"
else
	not_ok "a call reads $per_call blocks of the ledger (at most $LIMIT), with $N queued"
fi
finish
