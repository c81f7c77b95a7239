#!/usr/bin/env bash
# test/cron.sh: CALL alipayplus_run_cancellations() driven by pg_cron.
#
# Needs the rig up (scripts/lib.sh: pg_cron preloaded, cron.database_name =
# 'postgres', CREATE EXTENSION pg_cron done there, the fake gateway running).
# pg_cron 1.4 schedules have one-minute granularity, so this test takes
# two to three minutes.  Run as root from the repository:  bash test/cron.sh
#
# 1. A payment whose gateway answers U then S is queued with
#    alipayplus_request_cancel(), with a second one that succeeds at once;
#    a pg_cron job runs CALL alipayplus_run_cancellations() every minute in a
#    fresh database.  The first run gets U (retry due within a second, as
#    alipayplus.retry_base_ms is 1s there), the next run gets S.
# 2. Then the gateway URL points nowhere: the next run raises, and
#    cron.job_run_details shows the run as failed with the reason.
# 3. At the same time, a second job in another database runs the command
#    'CALL alipayplus_run_cancellations(); SELECT 1' (several statements:
#    an implicit transaction block, where the procedure cannot commit):
#    each run fails with SQLSTATE 25001's message and nothing is sent.

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

DB=apc_cron
JOB=apc_cron_test
DB2=apc_cron_multi
JOB2=apc_cron_multi_test
SUFFIX=$(date +%s%N)
ID_RETRY="seq-U.S-cron-$SUFFIX"
ID_NOW="cron-ok-$SUFFIX"
ID_FAIL="cron-down-$SUFFIX"
ID_MULTI="cron-multi-$SUFFIX"
T0=$SECONDS

# qp SQL: a value from database postgres, where pg_cron lives
qp() { q postgres "$1"; }
# qd SQL: a value from the test database
qd() { q "$DB" "$1"; }

# Unschedule our job, forget its run history, drop the database.
cleanup() {
	set +e
	qp "SELECT count(cron.unschedule(jobid)) FROM cron.job WHERE jobname = '$JOB'" >/dev/null 2>&1
	qp "DELETE FROM cron.job_run_details d WHERE NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobid = d.jobid) AND d.command LIKE '%alipayplus_run_cancellations%' AND d.database = '$DB'" >/dev/null 2>&1
	qp "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	qp "SELECT count(cron.unschedule(jobid)) FROM cron.job WHERE jobname = '$JOB2'" >/dev/null 2>&1
	qp "DELETE FROM cron.job_run_details d WHERE NOT EXISTS (SELECT 1 FROM cron.job j WHERE j.jobid = d.jobid) AND d.database = '$DB2'" >/dev/null 2>&1
	qp "DROP DATABASE IF EXISTS $DB2 WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT

# wait_for DB SQL SECONDS: poll every 2 s until SQL returns t; false on timeout
wait_for() {
	local deadline=$((SECONDS + $3)) v
	while [ $SECONDS -lt $deadline ]; do
		v=$(q "$1" "$2" 2>/dev/null || true)
		[ "$v" = t ] && return 0
		sleep 2
	done
	return 1
}

# the job's finished runs (succeeded or failed), as "status|return_message" lines
job_runs() {
	qp "SELECT d.status || '|' || coalesce(d.return_message, '') FROM cron.job_run_details d JOIN cron.job j USING (jobid) WHERE j.jobname = '$JOB' ORDER BY d.runid"
}

echo "# setting up database $DB"
cleanup
trap cleanup EXIT
qp "CREATE DATABASE $DB"
qd "CREATE EXTENSION alipayplus_cancel"
qp "ALTER DATABASE $DB SET alipayplus.retry_base_ms = '1s'"
expect "retry_base_ms is 1s in $DB" "1s" "$(qd "SHOW alipayplus.retry_base_ms")"

# --- part 1: U, then S on the next cron run ------------------------------

qd "SELECT state FROM alipayplus_request_cancel(payment_request_id => '$ID_RETRY')" >/dev/null
qd "SELECT state FROM alipayplus_request_cancel(payment_request_id => '$ID_NOW')" >/dev/null
expect "two cancellations queued, CANCELLING, no attempt yet" "2|0" \
	"$(qd "SELECT count(*) FILTER (WHERE state = 'CANCELLING' AND attempt_count = 0), (SELECT count(*) FROM alipayplus.cancel_attempts) FROM alipayplus.cancellations")"

# part 3's job, run alongside part 1's
qp "CREATE DATABASE $DB2"
q $DB2 "CREATE EXTENSION alipayplus_cancel"
q $DB2 "SELECT state FROM alipayplus_request_cancel(payment_request_id => '$ID_MULTI')" >/dev/null
jobid2=$(qp "SELECT cron.schedule_in_database('$JOB2', '* * * * *', 'CALL alipayplus_run_cancellations(); SELECT 1', '$DB2')")

jobid=$(qp "SELECT cron.schedule_in_database('$JOB', '* * * * *', 'CALL alipayplus_run_cancellations()', '$DB')")
expect "job scheduled in database $DB" "$DB|t|* * * * *" \
	"$(qp "SELECT database, active, schedule FROM cron.job WHERE jobid = $jobid")"
echo "# job $jobid scheduled at $(date +%T); waiting for the runs (one-minute granularity)"

if wait_for "$DB" "SELECT state = 'CANCELLED' FROM alipayplus.cancellations WHERE payment_request_id = '$ID_RETRY'" 200; then
	ok "U-then-S cancellation became CANCELLED by cron after $((SECONDS - T0)) s"
else
	not_ok "U-then-S cancellation not CANCELLED after 200 s: $(qd "SELECT state, attempt_count, last_result_code FROM alipayplus.cancellations WHERE payment_request_id = '$ID_RETRY'")"
	echo "# job runs:"; job_runs | sed 's/^/#   /'
fi
# the ledger commits before pg_cron records the run: wait for the record
wait_for postgres "SELECT count(*) >= 2 FROM cron.job_run_details WHERE jobid = $jobid AND status = 'succeeded'" 20 || true

expect "ledger row: CANCELLED, 2 attempts, last S SUCCESS, nothing pending" \
	"CANCELLED|2|S|SUCCESS|t|f" \
	"$(qd "SELECT state, attempt_count, last_result_status, last_result_code, next_attempt_at IS NULL, needs_attention FROM alipayplus.cancellations WHERE payment_request_id = '$ID_RETRY'")"
expect "attempts: U UNKNOWN_EXCEPTION then S SUCCESS, both by the processor" \
	"1|U|UNKNOWN_EXCEPTION|alipayplus_process_cancellations|paymentRequestId
2|S|SUCCESS|alipayplus_process_cancellations|paymentRequestId" \
	"$(qd "SELECT row_number() OVER (ORDER BY a.attempt_id), a.result_status, a.result_code, a.caller, a.sent_field FROM alipayplus.cancel_attempts a JOIN alipayplus.cancellations c USING (cancellation_id) WHERE c.payment_request_id = '$ID_RETRY' ORDER BY a.attempt_id")"
expect "the two attempts came from different cron runs (>= 30 s apart)" "t" \
	"$(qd "SELECT max(a.attempted_at) - min(a.attempted_at) >= interval '30 seconds' FROM alipayplus.cancel_attempts a JOIN alipayplus.cancellations c USING (cancellation_id) WHERE c.payment_request_id = '$ID_RETRY'")"
expect "the other cancellation: CANCELLED with a single S attempt by the processor" \
	"CANCELLED|1|S|SUCCESS|alipayplus_process_cancellations" \
	"$(qd "SELECT c.state, c.attempt_count, a.result_status, a.result_code, a.caller FROM alipayplus.cancellations c JOIN alipayplus.cancel_attempts a USING (cancellation_id) WHERE c.payment_request_id = '$ID_NOW'")"

n_ok=$(qp "SELECT count(*) FROM cron.job_run_details WHERE jobid = $jobid AND status = 'succeeded'")
if [ "$n_ok" -ge 2 ]; then
	ok "cron.job_run_details: $n_ok succeeded runs of job $jobid"
else
	not_ok "cron.job_run_details: expected >= 2 succeeded runs, got $n_ok: $(job_runs | tr '\n' ' ')"
fi
expect "cron.job_run_details: no failed run yet, all in $DB" "0|t" \
	"$(qp "SELECT count(*) FILTER (WHERE status = 'failed'), bool_and(database = '$DB') FROM cron.job_run_details WHERE jobid = $jobid")"
expect "processor_runs: the first run claimed both (1 cancelled, 1 retrying)" "1" \
	"$(qd "SELECT count(*) FROM alipayplus.processor_runs WHERE claimed = 2 AND cancelled = 1 AND retrying = 1 AND attention = 0 AND unanswered = 0")"
expect "processor_runs: a later run claimed the retry and cancelled it" "1" \
	"$(qd "SELECT count(*) FROM alipayplus.processor_runs WHERE claimed = 1 AND cancelled = 1 AND retrying = 0 AND unanswered = 0")"
expect "processor_runs: one row per succeeded cron run" "$n_ok" \
	"$(qd "SELECT count(*) FROM alipayplus.processor_runs")"
expect "processor_runs: every run stopped because nothing was due" "t" \
	"$(qd "SELECT bool_and(stopped_because = 'nothing due') FROM alipayplus.processor_runs")"

# --- part 3: a command of several statements is refused, nothing sent ----

if wait_for postgres "SELECT EXISTS (SELECT 1 FROM cron.job_run_details WHERE jobid = $jobid2 AND status IN ('succeeded', 'failed'))" 130; then
	ok "a run of the command 'CALL alipayplus_run_cancellations(); SELECT 1' finished"
else
	not_ok "no run of job $jobid2 finished within 130 s"
fi
expect "every run of it failed" "t" \
	"$(qp "SELECT bool_and(status = 'failed') FROM cron.job_run_details WHERE jobid = $jobid2 AND status IN ('succeeded', 'failed')")"
msg2=$(qp "SELECT return_message FROM cron.job_run_details WHERE jobid = $jobid2 AND status = 'failed' ORDER BY runid LIMIT 1")
case "$msg2" in
*"alipayplus_run_cancellations must be called as a top-level statement by itself"*)
	ok "its return_message says why: ${msg2%%$'\n'*}" ;;
*)
	not_ok "return_message does not say it must be a top-level statement: '$msg2'" ;;
esac
expect "nothing was sent for the queued cancellation, nothing recorded" "0|CANCELLING|0" \
	"$(gateway_requests "$ID_MULTI")|$(q $DB2 "SELECT state || '|' || attempt_count FROM alipayplus.cancellations WHERE sent_id = '$ID_MULTI'")"
qp "SELECT cron.unschedule($jobid2)" >/dev/null

# --- part 2: a systemic failure shows in cron.job_run_details ------------

qp "ALTER DATABASE $DB SET alipayplus.gateway_url = 'https://127.0.0.1:1'"
runs_before=$(qd "SELECT count(*) FROM alipayplus.processor_runs")
qd "SELECT state FROM alipayplus_request_cancel(payment_request_id => '$ID_FAIL')" >/dev/null
# runs that start from now on see both the new setting and the new row
last_runid=$(qp "SELECT coalesce(max(runid), 0) FROM cron.job_run_details WHERE jobid = $jobid")
echo "# gateway_url now unreachable in $DB; waiting for the next run ($(date +%T))"

if wait_for postgres "SELECT EXISTS (SELECT 1 FROM cron.job_run_details WHERE jobid = $jobid AND runid > $last_runid AND status IN ('succeeded', 'failed'))" 130; then
	ok "a cron run finished after the gateway became unreachable"
else
	not_ok "no cron run finished within 130 s: $(job_runs | tr '\n' ' ')"
fi
run=$(qp "SELECT status || '|' || coalesce(return_message, '') FROM cron.job_run_details WHERE jobid = $jobid AND runid > $last_runid AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1")
expect "that run is 'failed' in cron.job_run_details" "failed" "${run%%|*}"
msg=${run#*|}
case "$msg" in
*"Alipay+ gateway did not answer any of the 1 attempts of processor run"*)
	ok "its return_message says the gateway did not answer: ${msg%%$'\n'*}" ;;
*)
	not_ok "return_message does not say the gateway did not answer: '$msg'" ;;
esac
case "$msg" in
*"local.connect_failed"*) ok "its detail names the cause: local.connect_failed" ;;
*) not_ok "return_message does not name local.connect_failed: '$msg'" ;;
esac
# the failed run kept its attempt: recorded, the row backs off on its own
expect "the failed run kept its attempt: CANCELLING, 1 attempt recorded, backed off, not flagged" \
	"CANCELLING|1|1|t|f" \
	"$(qd "SELECT c.state, c.attempt_count, (SELECT count(*) FROM alipayplus.cancel_attempts a WHERE a.cancellation_id = c.cancellation_id), c.next_attempt_at > c.last_attempt_at, c.needs_attention FROM alipayplus.cancellations c WHERE c.payment_request_id = '$ID_FAIL'")"
expect "the failed run committed its processor_runs row (1 claimed, 1 unanswered)" "1|1|1" \
	"$(qd "SELECT count(*) - $runs_before, (array_agg(claimed ORDER BY run_id DESC))[1], (array_agg(unanswered ORDER BY run_id DESC))[1] FROM alipayplus.processor_runs")"

# --- clean up --------------------------------------------------------------

qp "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = '$JOB'" >/dev/null
expect "job unscheduled" "0" "$(qp "SELECT count(*) FROM cron.job WHERE jobname = '$JOB'")"
echo "# runtime $((SECONDS - T0)) s"
finish
