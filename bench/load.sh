#!/usr/bin/env bash
# bench/load.sh [SECONDS] [CLIENTS]: load with faults.  Sets up the rig
# (scripts/lib.sh, honouring the ALIPAYPLUS_* overrides) with the fake
# gateway in chaos mode: a random 20 % of the calls stall past
# alipayplus.timeout_ms or fail (TCP reset, HTTP 500, HTTP 503 with a signed
# S body, a signed U, an unsigned S, a bad signature) and the rest answer S
# (F PROCESS_FAIL one time in 20).  Then CLIENTS clients (default 8)
# work for SECONDS (default 60) the way users do: a quarter of them (at
# least one) are processors, each a session that runs
# CALL alipayplus_run_cancellations(50, '5 s') again and again (its ZA004
# "did not answer any" error, raised after committing when a run got no
# answer at all, is counted, not a failure: that is how it tells pg_cron);
# the others are pgbench clients, two thirds of their transactions
# application code that takes an order in a bound order table and requests
# its cancellation (alipayplus_request_cancel), one third direct
# alipayplus_cancel_payment calls, at LOAD_RATE transactions a second in
# all (default 100, about what two processors keep up with while a fifth of
# the calls fail; 0 = as fast as they go, and the queue grows).  The load
# database retries quickly (alipayplus.retry_base_ms 200, retry_max_ms
# 2000, max_attempts 10), so that every retry comes due within 2 s.  When
# the clients stop, it drains: CALL alipayplus_run_cancellations(1000, '5 s')
# again and again (with max_concurrency 64), the gateway still in chaos
# mode, until no CANCELLING row without needs_attention is due or DRAIN_S
# (60) seconds have passed (after the default run, a clean drain takes
# about 15 s).  Afterwards it checks and prints:
#
#   calls made      gateway requests and ledger attempts, matched on id and
#                   Request-Time (counted per pair: retries within a second
#                   share one): every attempt that was sent is in the
#                   gateway's log, and every request the gateway logged has
#                   its attempt, except that libcurl sends a request once
#                   more on a fresh connection when a kept-alive one is
#                   reset before any answer (counted apart)
#   outcomes        attempts by result status and code
#   callers         attempts made by the processors during the load (caller
#                   alipayplus_process_cancellations, before the drain) and
#                   by the clients' direct alipayplus_cancel_payment calls:
#                   both must be more than 0
#   crashes         no "terminated by signal", "was terminated", "exited
#                   with exit code", "all server processes terminated" in
#                   the server log; the postmaster's PID and start time
#                   unchanged; no client, processor or drain run stopped by
#                   an error
#   due             ledger rows CANCELLING, not needs_attention, with
#                   next_attempt_at at or before the end of the drain: the
#                   processor left them (must be 0)
#   rows stuck      ledger rows CANCELLING, not needs_attention, whose
#                   next_attempt_at is NULL or later than now() +
#                   alipayplus.retry_max_ms + STUCK_MARGIN_S (10 s): no
#                   retry is ever scheduled that late, so nobody would touch
#                   them again (must be 0)
#   inconsistent    ledger rows that disagree with their attempts:
#                   attempt_count differs from the number of attempt rows;
#                   last_result_status/last_result_code differ from the
#                   latest attempt's (highest attempt_id); CANCELLED without
#                   a verified S attempt (result_status S and
#                   signature_verified); CANCELLING with an S attempt; the
#                   bound order's status not the ledger state's value
#                   (CANCELLED / CANCELLING); plus any S attempt anywhere
#                   that is not signature_verified
#   attention       needs_attention rows that their attempts do not explain
#                   (must be 0).  Explained are: a CANCELLING row whose
#                   latest attempt is F with a code result_policy sends to a
#                   person (action attention; a code it does not know, or
#                   done, counts as attention for F, as in src/ledger.c), or
#                   U with a code whose action is attention; a CANCELLING
#                   row whose attempts since retry_budget_start reached
#                   alipayplus.max_attempts; and a row whose
#                   attention_reason is one the extension writes when an
#                   answer could not be applied (Q_NOT_APPLIED: "Alipay+
#                   cancelled the payment (verified S, attempt N), but the
#                   bound order could not be updated: ..." on a CANCELLED
#                   row with that verified S attempt, "Alipay+ answered
#                   STATUS CODE, but the result could not be applied: ..." with
#                   its latest attempt's status and code) or its order
#                   could not be claimed (the processor's "the bound order
#                   cannot be used: ..."), each ending in
#                   alipayplus_requeue_cancellation(its own id).  The
#                   reason text of a policy or max_attempts flag is not
#                   trusted: the attempts decide.
#
# and exits non-zero if any check fails.
#
# Test hook (for checking the checks, never for a real run): LOAD_INJECT, a
# comma-separated list of faults to inject, each of which must make a check
# fail.  Before the clients start:
#   idle       alipayplus_process_cancellations replaced by one that claims
#              nothing                          -> callers, due
#   nodirect   the direct clients make no call  -> callers
#   flagall    a trigger on the ledger flags every row it updates, with a
#              forged "no result after 10 attempts" reason -> attention
# After the drain, just before the checks (rows never attempted):
#   null       1 row CANCELLING, next_attempt_at NULL         -> rows stuck
#   infinity   1 row CANCELLING, next_attempt_at 'infinity'   -> rows stuck
#   far        1 row CANCELLING, next_attempt_at now() + 1 day -> rows stuck
#   due        3 rows CANCELLING, due a day ago               -> due
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

DURATION=${1:-60}
CLIENTS=${2:-8}
FAULT_SHARE=0.2
STALL_MS=2000			# the stall of a stalled call, past the timeout below
TIMEOUT_MS=1000			# alipayplus.timeout_ms of the load database
RATE=${LOAD_RATE:-100}
RETRY_BASE_MS=200		# alipayplus.retry_base_ms of the load database
RETRY_MAX_MS=2000		# alipayplus.retry_max_ms: every retry due within 2 s
MAX_ATTEMPTS=10			# alipayplus.max_attempts
DRAIN_S=60				# the longest the drain after the load may take
STUCK_MARGIN_S=10		# beyond retry_max_ms, a due time no retry would have
INJECT=",${LOAD_INJECT:-},"	# the test hook (see above)
injected() { [[ "$INJECT" == *",$1,"* ]]; }
for f in ${INJECT//,/ }; do
	case "$f" in
		idle|nodirect|flagall|null|infinity|far|due) ;;
		*) echo "LOAD_INJECT: unknown fault $f" >&2; exit 2 ;;
	esac
done
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS] [CLIENTS]" >&2; exit 2; }
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS] [CLIENTS]" >&2; exit 2; }
[[ "$RATE" =~ ^[0-9]+$ ]] || { echo "LOAD_RATE must be a number" >&2; exit 2; }
rate_opt=()
[ "$RATE" = 0 ] || rate_opt=(-R "$RATE")
# pgbench comes with postgresql-15; rig_up installs what is missing
PACKAGES="$PACKAGES postgresql-15"

rig_up --chaos "$FAULT_SHARE" --chaos-stall-ms "$STALL_MS"
OUT=$RIG/load
mkdir -p "$OUT"
chown postgres:postgres "$OUT"

say "setting up the load database"
psql_rig -q -d postgres -c "CREATE DATABASE load"
psql_rig -q -d load <<SQL
CREATE EXTENSION alipayplus_cancel;
ALTER DATABASE load SET alipayplus.timeout_ms = $TIMEOUT_MS;
ALTER DATABASE load SET alipayplus.retry_base_ms = $RETRY_BASE_MS;
ALTER DATABASE load SET alipayplus.retry_max_ms = $RETRY_MAX_MS;
ALTER DATABASE load SET alipayplus.max_attempts = $MAX_ATTEMPTS;
CREATE SCHEMA shop;
CREATE SEQUENCE shop.ids;
CREATE TABLE shop.orders (
	order_no bigint PRIMARY KEY DEFAULT nextval('shop.ids'),
	payment_request_id text NOT NULL UNIQUE,
	status text NOT NULL DEFAULT 'PENDING',
	created_at timestamptz NOT NULL DEFAULT now()
);
SELECT alipayplus_bind_orders('shop.orders', 'payment_request_id', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID', failed_value => 'FAILED');
-- the application: take an order (its own transaction), and hear nothing back
CREATE FUNCTION shop.take_order() RETURNS text LANGUAGE sql AS \$\$
	INSERT INTO shop.orders (payment_request_id)
	VALUES ('lo-' || nextval('shop.ids')) RETURNING payment_request_id
\$\$;
SQL

# the clients' scripts (pgbench -M extended: :id is a text parameter)
cat >"$OUT/app.sql" <<'SQL'
SELECT shop.take_order() AS id \gset
BEGIN;
SELECT state FROM alipayplus_request_cancel(payment_request_id => :id);
COMMIT;
SQL
cat >"$OUT/direct.sql" <<'SQL'
SELECT result_status FROM alipayplus_cancel_payment(payment_request_id => 'ld-' || nextval('shop.ids'));
SQL
chmod 0644 "$OUT"/*.sql

# the test hook's faults before the load (see the header)
if [ "$INJECT" != ",," ]; then
	say "TEST HOOK: injecting ${LOAD_INJECT:-}"
fi
if injected idle; then
	psql_rig -q -d load <<'SQL'
CREATE OR REPLACE FUNCTION alipayplus_process_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds', continue_run bigint DEFAULT NULL)
RETURNS TABLE (run_id bigint, claimed integer, cancelled integer, retrying integer,
	attention integer, unanswered integer, busy integer, elapsed_ms numeric,
	last_error text)
LANGUAGE sql AS $$ SELECT NULL::bigint, 0, 0, 0, 0, 0, 0, 0::numeric, NULL::text $$;
SQL
fi
if injected nodirect; then
	echo "SELECT nextval('shop.ids');" >"$OUT/direct.sql"
fi
if injected flagall; then
	psql_rig -q -d load <<'SQL'
CREATE FUNCTION shop.flag_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.needs_attention := true;
	NEW.next_attempt_at := NULL;
	NEW.attention_reason := format('no result after %s attempts (last: %s %s); contact Alipay+ support at connect_support@service.alipay.com',
		current_setting('alipayplus.max_attempts'), NEW.last_result_status, NEW.last_result_code);
	RETURN NEW;
END $$;
CREATE TRIGGER flag_all BEFORE UPDATE ON alipayplus.cancellations
	FOR EACH ROW WHEN (NOT NEW.needs_attention) EXECUTE FUNCTION shop.flag_all();
SQL
fi

pm_pid_before=$(head -n 1 "$RIG/pgdata/postmaster.pid")
pm_start_before=$(psql_rig -At -d load -c "SELECT pg_postmaster_start_time()")
log_offset=$(stat -c %s "$RIG/postgres.log")
gw_offset=$(stat -c %s "$RIG/gateway.jsonl")

say "$CLIENTS clients for $DURATION s (processors: $(( CLIENTS / 4 < 1 ? 1 : CLIENTS / 4 )); rate ${RATE:-0}/s, 0 = unthrottled), $(awk -v p="$FAULT_SHARE" 'BEGIN { print p * 100 }') % of the calls stalled or failed"
# processor_loop N END: one processor session, CALLs until END (epoch s);
# writes "runs za004 other_errors" to $OUT/processor.N.counts
processor_loop() {
	local n=$1 end=$2 runs=0 za004=0 errors=0 out
	coproc PSQL { as_postgres $PGBIN/psql -X -q -h "$RIG" -p "$PGPORT_RIG" -U postgres -d load 2>&1; }
	while [ "$(date +%s)" -lt "$end" ]; do
		out=$(ask "CALL alipayplus_run_cancellations(50, '5 s');")
		runs=$((runs + 1))
		case "$out" in
			"") ;;
			*"did not answer any of the"*) za004=$((za004 + 1)) ;;
			*) errors=$((errors + 1)); echo "$out" >>"$OUT/processor.$n.errors" ;;
		esac
	done
	echo '\q' >&"${PSQL[1]}"
	echo "$runs $za004 $errors" >"$OUT/processor.$n.counts"
}
processors=$(( CLIENTS / 4 < 1 ? 1 : CLIENTS / 4 ))
app_clients=$(( CLIENTS - processors ))
[ "$app_clients" -ge 1 ] || { echo "at least 2 clients" >&2; exit 2; }
rm -f "$OUT"/processor.*
end=$(( $(date +%s) + DURATION ))
proc_pids=()
for n in $(seq 1 "$processors"); do
	processor_loop "$n" "$end" &
	proc_pids+=($!)
done
threads=$(( app_clients < 2 ? 1 : 2 ))
set +e
as_postgres $PGBIN/pgbench -h "$RIG" -p "$PGPORT_RIG" -U postgres -n -M extended \
	-c "$app_clients" -j "$threads" -T "$DURATION" "${rate_opt[@]}" \
	-f "$OUT/app.sql@2" -f "$OUT/direct.sql@1" \
	load >"$OUT/pgbench.out" 2>&1
pgbench_rc=$?
set -e
wait "${proc_pids[@]}"
read -r runs unanswered_runs proc_errors < <(cat "$OUT"/processor.*.counts |
	awk '{ r += $1; u += $2; e += $3 } END { print r + 0, u + 0, e + 0 }')
echo "processor runs: $runs ($unanswered_runs ended with ZA004, $proc_errors other errors)"
grep -E "^(number of (transactions|failed)|tps|latency average)|aborted|ERROR" "$OUT/pgbench.out" | head -n 20 || true

q() { psql_rig -At -d load -c "$1"; }
# the drain: the processor until nothing is due (the gateway still in chaos
# mode); drain_end is the time of the last look, due_left what it saw
say "draining: the processor until no row is due (at most $DRAIN_S s)"
drain_start=$(q "SELECT now()")
drain_deadline=$(( $(date +%s) + DRAIN_S ))
drain_runs=0
drain_errors=0
while :; do
	IFS='|' read -r drain_end due_left < <(q "SELECT now(), count(*) FILTER (WHERE next_attempt_at <= now())
		FROM alipayplus.cancellations WHERE state = 'CANCELLING' AND NOT needs_attention")
	[ "$due_left" = 0 ] && break
	[ "$(date +%s)" -lt "$drain_deadline" ] || break
	drain_runs=$((drain_runs + 1))
	if ! out=$(psql_rig -q -d load -c "SET alipayplus.max_concurrency = 64" \
		-c "CALL alipayplus_run_cancellations(1000, '5 s')" 2>&1); then
		case "$out" in
			*"did not answer any of the"*) ;;
			*) drain_errors=$((drain_errors + 1)); echo "$out" >>"$OUT/drain.errors" ;;
		esac
	fi
done
drain_s=$(q "SELECT round(extract(epoch FROM timestamptz '$drain_end' - timestamptz '$drain_start')::numeric, 1)")
echo "drain: $drain_runs runs in $drain_s s, $due_left rows still due, $drain_errors errors"

# the test hook's faults after the drain (see the header)
if injected null; then
	q "INSERT INTO alipayplus.cancellations (sent_field, sent_id, payment_request_id, next_attempt_at)
		VALUES ('paymentRequestId', 'inj-null', 'inj-null', NULL)"
fi
if injected infinity; then
	q "INSERT INTO alipayplus.cancellations (sent_field, sent_id, payment_request_id, next_attempt_at)
		VALUES ('paymentRequestId', 'inj-infinity', 'inj-infinity', 'infinity')"
fi
if injected far; then
	q "INSERT INTO alipayplus.cancellations (sent_field, sent_id, payment_request_id, next_attempt_at)
		VALUES ('paymentRequestId', 'inj-far', 'inj-far', now() + interval '1 day')"
fi
if injected due; then
	q "INSERT INTO alipayplus.cancellations (sent_field, sent_id, payment_request_id, next_attempt_at)
		SELECT 'paymentRequestId', 'inj-due-' || g, 'inj-due-' || g, now() - interval '1 day'
		FROM generate_series(1, 3) g"
fi

say "checks"
# the gateway's requests since the load began, into the database
tail -c +$((gw_offset + 1)) "$RIG/gateway.jsonl" >"$OUT/gateway.jsonl"
chmod 0644 "$OUT/gateway.jsonl"
psql_rig -q -d load -v ON_ERROR_STOP=1 -v gwlog="$OUT/gateway.jsonl" <<'SQL'
CREATE TABLE gw (j jsonb);
SELECT pg_read_file(:'gwlog') AS gwtext \gset
INSERT INTO gw SELECT l::jsonb FROM regexp_split_to_table(:'gwtext', E'\n') l WHERE l <> '';
SQL

gw_requests=$(q "SELECT count(*) FROM gw WHERE j->>'path' = '/aps/api/v1/payments/cancelPayment'")
attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts")
sent_attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code <> 'local.not_sent'")
# per (id, Request-Time): requests the gateway logged (and how many it
# reset) against attempts recorded
psql_rig -q -d load -c "CREATE TABLE matched AS
	SELECT id, rt, coalesce(g.n, 0) AS gw_n, coalesce(g.resets, 0) AS resets,
		   coalesce(a.n, 0) AS att_n
	FROM (SELECT j->>'id' AS id, j->>'request_time' AS rt, count(*) AS n,
				 count(*) FILTER (WHERE j->>'outcome' LIKE '%reset') AS resets
		  FROM gw GROUP BY 1, 2) g
	FULL JOIN (SELECT sent_id AS id, request_time AS rt, count(*) AS n
			   FROM alipayplus.cancel_attempts WHERE result_code <> 'local.not_sent'
			   GROUP BY 1, 2) a USING (id, rt)"
attempts_unseen=$(q "SELECT coalesce(sum(greatest(att_n - gw_n, 0)), 0) FROM matched")
resent=$(q "SELECT coalesce(sum(least(greatest(gw_n - att_n, 0), resets)), 0) FROM matched")
requests_unrecorded=$(q "SELECT coalesce(sum(greatest(gw_n - att_n, 0) - least(greatest(gw_n - att_n, 0), resets)), 0) FROM matched")
cancelled=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED'")
cancelling=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLING'")
attention=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE needs_attention")
due=$(q "SELECT count(*) FROM alipayplus.cancellations
	WHERE state = 'CANCELLING' AND NOT needs_attention AND next_attempt_at <= timestamptz '$drain_end'")
waiting=$(q "SELECT count(*) FROM alipayplus.cancellations
	WHERE state = 'CANCELLING' AND NOT needs_attention AND next_attempt_at > timestamptz '$drain_end'")
proc_attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts
	WHERE caller = 'alipayplus_process_cancellations' AND attempted_at < timestamptz '$drain_start'")
drain_attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts
	WHERE caller = 'alipayplus_process_cancellations' AND attempted_at >= timestamptz '$drain_start'")
direct_attempts=$(q "SELECT count(*) FROM alipayplus.cancel_attempts WHERE caller = 'alipayplus_cancel_payment'")
retried=$(q "SELECT count(*) FROM alipayplus.cancellations WHERE attempt_count > 1")
orders=$(q "SELECT count(*) FROM shop.orders")

# crashes: the server log since the load began, and the postmaster
crash_lines=$(tail -c +$((log_offset + 1)) "$RIG/postgres.log" |
	grep -cE "terminated by signal|was terminated|exited with exit code|all server processes terminated|server process .* exited" || true)
pm_pid_after=$(head -n 1 "$RIG/pgdata/postmaster.pid")
pm_start_after=$(psql_rig -At -d load -c "SELECT pg_postmaster_start_time()")
postmaster_restarted=0
[ "$pm_pid_before" = "$pm_pid_after" ] && [ "$pm_start_before" = "$pm_start_after" ] || postmaster_restarted=1
aborted=$(( $(grep -c "aborted" "$OUT/pgbench.out" || true) + proc_errors + drain_errors ))

stuck=$(q "SELECT count(*) FROM alipayplus.cancellations
	WHERE state = 'CANCELLING' AND NOT needs_attention
	  AND (next_attempt_at IS NULL
		   OR next_attempt_at > now() + current_setting('alipayplus.retry_max_ms')::interval
								   + interval '$STUCK_MARGIN_S s')")
# attention: every flagged row explained by its attempts (see the header)
unexplained=$(q "
WITH a AS (
	SELECT cancellation_id, count(*) AS n,
		   (array_agg(attempt_id ORDER BY attempt_id DESC))[1] AS last_id,
		   (array_agg(result_status ORDER BY attempt_id DESC))[1] AS last_status,
		   (array_agg(result_code ORDER BY attempt_id DESC))[1] AS last_code
	FROM alipayplus.cancel_attempts GROUP BY cancellation_id),
f AS (
	SELECT c.*, a.n, a.last_id, a.last_status, a.last_code,
		   (SELECT p.action FROM alipayplus.result_policy p
			WHERE p.result_code = a.last_code ORDER BY p.builtin LIMIT 1) AS action
	FROM alipayplus.cancellations c LEFT JOIN a USING (cancellation_id)
	WHERE c.needs_attention)
SELECT count(*) FROM f
WHERE NOT (
	/* the result policy sent the latest answer to a person */
	(f.state = 'CANCELLING' AND f.last_status IN ('F', 'U')
	 AND coalesce(nullif(f.action, 'done'),
				  CASE f.last_status WHEN 'U' THEN 'retry' ELSE 'attention' END) = 'attention')
	/* the retry budget is spent */
	OR (f.state = 'CANCELLING' AND f.last_status IN ('F', 'U')
		AND coalesce(f.n, 0) - f.retry_budget_start >= current_setting('alipayplus.max_attempts')::integer)
	/* an answer that could not be applied (Q_NOT_APPLIED) */
	OR (f.state = 'CANCELLED'
		AND f.attention_reason LIKE format('Alipay+ cancelled the payment (verified S, attempt %s), but the bound order could not be updated: %%; fix that, then run alipayplus_requeue_cancellation(%s)',
										   f.last_id, f.cancellation_id)
		AND EXISTS (SELECT 1 FROM alipayplus.cancel_attempts x
					WHERE x.attempt_id = f.last_id AND x.result_status = 'S' AND x.signature_verified))
	OR (f.state = 'CANCELLING'
		AND f.attention_reason LIKE format('Alipay+ answered %s %s, but the result could not be applied: %%; fix that, then run alipayplus_requeue_cancellation(%s)',
										   f.last_status, f.last_code, f.cancellation_id))
	/* an order the processor could not claim */
	OR (f.state = 'CANCELLING'
		AND f.attention_reason LIKE format('the bound order cannot be used: %%; fix the order row, then run alipayplus_requeue_cancellation(%s)',
										   f.cancellation_id)))")
inconsistent=$(q "
WITH a AS (
	SELECT cancellation_id, count(*) AS n,
		   bool_or(result_status = 'S' AND signature_verified) AS verified_s,
		   bool_or(result_status = 'S') AS any_s,
		   (array_agg(result_status ORDER BY attempt_id DESC))[1] AS last_status,
		   (array_agg(result_code ORDER BY attempt_id DESC))[1] AS last_code
	FROM alipayplus.cancel_attempts GROUP BY cancellation_id)
SELECT count(*) FROM alipayplus.cancellations c
LEFT JOIN a USING (cancellation_id)
LEFT JOIN shop.orders o ON o.payment_request_id = c.sent_id
WHERE c.attempt_count <> coalesce(a.n, 0)
   OR c.last_result_status IS DISTINCT FROM a.last_status
   OR c.last_result_code IS DISTINCT FROM a.last_code
   OR (c.state = 'CANCELLED' AND NOT coalesce(a.verified_s, false))
   OR (c.state = 'CANCELLING' AND coalesce(a.any_s, false))
   OR (o.order_no IS NOT NULL AND o.status <> c.state)")
unverified_s=$(q "SELECT count(*) FROM alipayplus.cancel_attempts
	WHERE result_status = 'S' AND signature_verified IS NOT TRUE")
inconsistent=$((inconsistent + unverified_s))

echo
echo "outcomes of the attempts (ledger):"
psql_rig -d load -c "SELECT result_status, result_code, count(*) AS attempts
	FROM alipayplus.cancel_attempts GROUP BY 1, 2 ORDER BY 1, 3 DESC"
echo "what the gateway did:"
psql_rig -d load -c "SELECT regexp_replace(j->>'outcome', '^chaos:', 'fault: ') AS gateway_outcome, count(*) AS requests
	FROM gw GROUP BY 1 ORDER BY 2 DESC"
echo "by caller:"
psql_rig -d load -c "SELECT caller, count(*) AS attempts FROM alipayplus.cancel_attempts GROUP BY 1 ORDER BY 1"

failed=0
row() {	# name value ok(0/1) note
	local verdict=ok
	[ "$3" = 1 ] || { verdict=FAILED; failed=1; }
	printf '%-44s %10s   %-6s %s\n' "$1" "$2" "$verdict" "${4:-}"
}
eq0() { [ "$1" = 0 ] && echo 1 || echo 0; }
echo
printf '%-44s %10s   %-6s %s\n' "load with faults: ${DURATION} s, $CLIENTS clients" "value" "check" ""
printf '%s\n' "--------------------------------------------------------------------------------"
row "calls logged by the gateway" "$gw_requests" 1
row "attempts in the ledger" "$attempts" 1 "($sent_attempts sent)"
row "sent attempts the gateway never saw" "$attempts_unseen" "$(eq0 "$attempts_unseen")" "must be 0"
row "requests libcurl re-sent after a reset" "$resent" 1 "(same signed request, fresh connection)"
row "gateway requests with no attempt recorded" "$requests_unrecorded" "$(eq0 "$requests_unrecorded")" "must be 0"
row "orders taken" "$orders" 1
row "ledger rows CANCELLED / CANCELLING" "$cancelled / $cancelling" 1 "($attention need attention, $waiting waiting)"
row "ledger rows that took more than one attempt" "$retried" 1
row "backends crashed (server log)" "$crash_lines" "$(eq0 "$crash_lines")" "must be 0"
row "postmaster restarted" "$postmaster_restarted" "$(eq0 "$postmaster_restarted")" "PID $pm_pid_after"
row "processor runs (ended with ZA004)" "$runs" 1 "($unanswered_runs)"
row "attempts by the processors during the load" "$proc_attempts" "$([ "$proc_attempts" -gt 0 ] && echo 1 || echo 0)" "must be > 0"
row "attempts by the direct calls" "$direct_attempts" "$([ "$direct_attempts" -gt 0 ] && echo 1 || echo 0)" "must be > 0"
row "drain: runs / seconds / attempts" "$drain_runs / $drain_s / $drain_attempts" 1 "(at most $DRAIN_S s)"
row "rows due after the drain" "$due" "$(eq0 "$due")" "must be 0"
row "clients stopped by an error" "$aborted" "$(eq0 "$aborted")" "pgbench exit $pgbench_rc"
row "rows stuck" "$stuck" "$(eq0 "$stuck")" "must be 0"
row "rows needing attention, unexplained" "$unexplained" "$(eq0 "$unexplained")" "must be 0 (of $attention)"
row "ledger rows inconsistent with attempts" "$inconsistent" "$(eq0 "$inconsistent")" "must be 0 ($unverified_s unverified S)"
[ "$pgbench_rc" = 0 ] || { echo "pgbench exited with $pgbench_rc; see $OUT/pgbench.out" >&2; failed=1; }
[ "$gw_requests" -gt 0 ] || { echo "no calls were made" >&2; failed=1; }
echo
rig_stop
if [ "$failed" = 0 ]; then
	echo "load with faults: all checks passed"
else
	echo "load with faults: FAILED" >&2
	exit 1
fi
