#!/usr/bin/env bash
# test/audit.sh: every request that leaves is on record (issue 16).
#
# The committing processor (CALL alipayplus_run_cancellations) works a queue
# of 200 cancellations, 64 calls in flight, each answered S by the gateway
# 1.5 s after it arrives, and is interrupted about half a second in, once the
# first 64 requests have reached the gateway, by
#   cancel     pg_cancel_backend()
#   terminate  pg_terminate_backend()
#   stimeout   statement_timeout = 1.2s: it fires while the 64 calls wait,
#              after they have all reached the gateway, before any answer
#   stimeout2  statement_timeout = 2.6s: the first 64 answers are in and
#              settled, their slots refilled, and the next calls are cut
#              (it fires between the refills and their answers, so that
#              every request then in flight has reached the gateway)
# (kill -9 of the backend restarts the cluster: test/tap/t/audit_crash.pl),
# and then run again until the queue is empty.  Each time, before and after
# the rerun: the gateway's log (one line per request it received, written
# when the request arrives) and alipayplus.cancel_attempts hold the same
# requests, id by id; processor_runs shows the interrupted run (found by its
# backend's pid) and why it stopped; the error names its true cause (57014,
# never the gateway's ZA004 "did not answer"); the calls cut short are
# U local.interrupted / local.statement_timeout / local.crashed, never the
# gateway's local.timeout; in the end every payment is CANCELLED by exactly
# one S, nothing is left without an answer, every request of a payment
# carried the same parameters, and cancelled_at is the time the verified S
# answer arrived (not before its attempt's answer).
#
# slowtrig: a slow owner's trigger on the bound orders table and
# statement_timeout = 3000ms: the timeout fires while answers are applied;
# the CALL stops within the documented bound and fails with the timeout's own
# error instead of returning success; nothing is lost.
#
# Run as root from the repository, with the rig up:  bash test/audit.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_audit
TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_audit.XXXXXX)
N=200
WIDTH=64
# the slow trigger's run: statement_timeout, and the longest the CALL may
# take (the timeout, plus what the README allows for stopping after it)
TRIG_TIMEOUT_MS=3000
TRIG_BOUND_MS=4500

# ids MODE: the LIKE pattern of the mode's payment ids
ids() { echo "slow-1500-audit-$1-%-$TAG"; }

# gw_counts PATTERN: "id count" per id the gateway received requests for,
# sorted (PATTERN: a LIKE pattern with % only)
gw_counts() {
	$PY - "$RIG/gateway.jsonl" "$1" <<'PY'
import json, re, sys, collections
rx = re.compile("^" + ".*".join(map(re.escape, sys.argv[2].split("%"))) + "$")
n = collections.Counter()
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        e = json.loads(line)
        if e.get("id") and rx.match(e["id"]):
            n[e["id"]] += 1
for k in sorted(n):
    print(k, n[k])
PY
}

# gw_params PATTERN: the ids whose requests did not all carry the same
# parameters (id field and body), one line each
gw_params() {
	$PY - "$RIG/gateway.jsonl" "$1" <<'PY'
import json, re, sys, collections
rx = re.compile("^" + ".*".join(map(re.escape, sys.argv[2].split("%"))) + "$")
seen = collections.defaultdict(set)
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        e = json.loads(line)
        if e.get("id") and rx.match(e["id"]):
            seen[e["id"]].add((e.get("id_field"), e.get("body")))
for k in sorted(seen):
    if len(seen[k]) != 1:
        print(k, len(seen[k]))
PY
}

# gw PATTERN: how many requests the gateway received for the ids
gw() { gw_counts "$1" | awk '{ s += $2 } END { print s + 0 }'; }

# db_counts PATTERN: "id count" per id with attempts on record, sorted
db_counts() {
	q "$DB" "SELECT sent_id || ' ' || count(*) FROM alipayplus.cancel_attempts
		WHERE sent_id LIKE '$1' GROUP BY sent_id ORDER BY sent_id COLLATE \"C\""
}

# same_requests NAME PATTERN: the gateway's requests and the attempts on
# record match id by id
same_requests() {
	local g d
	g=$(gw_counts "$2" | LC_ALL=C sort)
	d=$(db_counts "$2" | LC_ALL=C sort)
	if [ "$g" == "$d" ]; then
		ok "$1: the gateway's requests = the attempts on record, id by id ($(echo "$g" | awk '{ s += $2 } END { print s + 0 }') requests)"
	else
		not_ok "$1: the gateway's requests ($(echo "$g" | awk '{ s += $2 } END { print s + 0 }')) and the attempts on record ($(echo "$d" | awk '{ s += $2 } END { print s + 0 }')) differ"
		diff <(echo "$g") <(echo "$d") | head -n 10 | sed 's/^/#   gateway< >table: /'
	fi
}

# codes PATTERN: "code=count ..." of the attempts for the ids, by result code
codes() {
	q "$DB" "SELECT coalesce(string_agg(result_code || '=' || n, ' ' ORDER BY result_code), '(none)')
		FROM (SELECT result_code, count(*) n FROM alipayplus.cancel_attempts
			  WHERE sent_id LIKE '$1' GROUP BY 1) x"
}

# count_code PATTERN CODE: attempts for the ids with that result code
count_code() {
	q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id LIKE '$1' AND result_code = '$2'"
}

# run_of PID: "stopped_because|finished" of the processor_runs row(s) of the
# run whose backend had that pid ("(no row)" when there is none); read
# through to_jsonb so that a table without the pid column gives no row
# rather than an error
run_of() {
	q "$DB" "SELECT coalesce(string_agg(coalesce(p.stopped_because, '(null)') || '|' ||
			(p.finished_at IS NOT NULL), ' // ' ORDER BY p.run_id), '(no row)')
		FROM alipayplus.processor_runs p WHERE to_jsonb(p)->>'pid' = '$1'"
}

# backend_of MARK: pid of the backend running the CALL marked MARK, 20 s at most
backend_of() {
	local deadline=$(($(now_ms) + 20000)) row=""
	while [ "$(now_ms)" -lt $deadline ]; do
		row=$(q "$DB" "SELECT pid FROM pg_stat_activity
			WHERE query LIKE '%/* $1 */%' AND pid <> pg_backend_pid() LIMIT 1")
		[ -n "$row" ] && break
		sleep 0.02
	done
	echo "$row"
}

# arrived PATTERN COUNT SECONDS: wait until the gateway has received COUNT
# requests for the ids
arrived() {
	local deadline=$(($(now_ms) + $3 * 1000))
	while [ "$(now_ms)" -lt $deadline ]; do
		[ "$(gw "$1")" -ge "$2" ] && return 0
		sleep 0.02
	done
	return 1
}

scratch_db $DB || { not_ok "create database $DB with the extension"; finish; }

# queue PATTERN PREFIX: the mode's N cancellations, queued and committed;
# only they are due
queue() {
	q "$DB" "UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
		WHERE state = 'CANCELLING' AND NOT needs_attention" >/dev/null
	q "$DB" "SELECT count(*) FROM generate_series(1, $N) i,
		alipayplus_request_cancel(payment_request_id => '$2-' || i || '-$TAG')" >/dev/null
}

# processor MODE [SETTINGS]: the CALL in the background, marked with the
# mode in a comment, its output in $TMP/MODE.out
processor() {
	$PGBIN/psql -X -q -d "$DB" >"$TMP/$1.out" 2>&1 <<SQL &
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SET alipayplus.max_concurrency = $WIDTH;
${2:-}
CALL alipayplus_run_cancellations(1000, '5 min') /* audit-$1 */;
\echo SQLSTATE=:SQLSTATE
\echo MESSAGE=:LAST_ERROR_MESSAGE
SQL
	BG_PIDS+=($!)
}

# rerun PATTERN: the processor again until the ids' rows are all settled
rerun() {
	local deadline=$(($(now_ms) + 60000)) left
	while [ "$(now_ms)" -lt $deadline ]; do
		PGOPTIONS="-c alipayplus.max_concurrency=$WIDTH" \
			q "$DB" "CALL alipayplus_run_cancellations(1000, '1 min')" >/dev/null 2>&1
		left=$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations
			WHERE state = 'CANCELLING' AND sent_id LIKE '$1'")
		[ "$left" = 0 ] && return 0
		sleep 0.3
	done
	return 1
}

# no_gateway_blame NAME FILE
no_gateway_blame() {
	if grep -q "ZA004\|gateway did not answer" "$2"; then
		not_ok "$1: the error blames the gateway"
	else
		ok "$1: no error blames the gateway (no ZA004)"
	fi
}

# ledger_checks NAME PATTERN: the checks once the queue is done
ledger_checks() {
	local m=$1 p=$2
	same_requests "$m: after the rerun" "$p"
	expect "$m: every payment CANCELLED, each by exactly one S attempt, nothing flagged" "$N|$N|$N|0" \
		"$(q "$DB" "SELECT count(*) || '|' || count(*) FILTER (WHERE state = 'CANCELLED') || '|' ||
			(SELECT count(*) FROM (SELECT DISTINCT ON (a.sent_id) 1 FROM alipayplus.cancel_attempts a
				WHERE a.result_status = 'S' AND a.sent_id LIKE '$p'
					AND (SELECT count(*) FROM alipayplus.cancel_attempts b
						 WHERE b.sent_id = a.sent_id AND b.result_status = 'S') = 1) x) || '|' ||
			count(*) FILTER (WHERE needs_attention)
			FROM alipayplus.cancellations WHERE sent_id LIKE '$p'")"
	expect "$m: no attempt is left without an answer (none 'local.no_answer_yet', none without completed_at)" "0|0" \
		"$(q "$DB" "SELECT count(*) FILTER (WHERE a.result_code = 'local.no_answer_yet') || '|' ||
			count(*) FILTER (WHERE to_jsonb(a)->>'completed_at' IS NULL)
			FROM alipayplus.cancel_attempts a WHERE a.sent_id LIKE '$p'")"
	expect "$m: no call is blamed on the gateway's own timeout (local.timeout)" 0 "$(count_code "$p" local.timeout)"
	expect "$m: the same parameters on every request to the gateway (id field and body)" "" "$(gw_params "$p")"
	expect "$m: the same parameters on every attempt on record (the ledger row's sent id)" 0 \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancel_attempts a
			JOIN alipayplus.cancellations c USING (cancellation_id)
			WHERE c.sent_id LIKE '$p' AND (a.sent_id, a.sent_field) IS DISTINCT FROM (c.sent_id, c.sent_field)")"
	# the gateway answers 1.5 s after a request arrives: the S answer, and so
	# cancelled_at, comes at least 1.4 s after its attempt was made
	expect "$m: cancelled_at is the S answer's time: >= the S attempt's completed_at, >= its attempted_at + 1.4 s" 0 \
		"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations c
			JOIN alipayplus.cancel_attempts a ON a.cancellation_id = c.cancellation_id AND a.result_status = 'S'
			WHERE c.sent_id LIKE '$p'
				AND (c.cancelled_at IS NULL OR to_jsonb(a)->>'completed_at' IS NULL
					 OR c.cancelled_at < (to_jsonb(a)->>'completed_at')::timestamptz
					 OR c.cancelled_at < a.attempted_at + interval '1.4 seconds'
					 OR c.cancelled_at > pg_catalog.clock_timestamp())")"
}

# ---------------------------------------------------------------------------
for mode in cancel terminate stimeout stimeout2; do
	p=$(ids $mode)
	case $mode in
		stimeout) settings="SET statement_timeout = '1200ms';" ;;
		stimeout2) settings="SET statement_timeout = '2600ms';" ;;
		*) settings="" ;;
	esac
	echo "# $mode: $N cancellations answered S after 1.5 s, $WIDTH in flight"
	queue "$p" "slow-1500-audit-$mode"
	t0=$(now_ms)
	processor $mode "$settings"
	bg=$!
	pid=$(backend_of "audit-$mode")
	if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
		not_ok "$mode: no processor backend found"
		sed 's/^/#   /' "$TMP/$mode.out"
		continue
	fi
	# the interrupt comes once the first 64 requests have all reached the
	# gateway (so that each one that left is one the gateway logged), and
	# half a second in at the earliest
	arrived "$p" $WIDTH 20 || not_ok "$mode: the gateway did not receive $WIDTH requests within 20 s (it has $(gw "$p"))"
	el=$(($(now_ms) - t0))
	[ "$el" -lt 500 ] && sleep "0.$(printf '%03d' $((500 - el)))"
	case $mode in
		cancel) q "$DB" "SELECT pg_cancel_backend($pid)" >/dev/null ;;
		terminate) q "$DB" "SELECT pg_terminate_backend($pid)" >/dev/null ;;
	esac
	if wait_exit "$bg" 30; then
		ok "$mode: the processor's session ended"
	else
		not_ok "$mode: the processor's session still runs 30 s after the interrupt"
	fi
	sed 's/^/#   /' "$TMP/$mode.out"
	sent=$(gw "$p")
	echo "#   the gateway received $sent requests; attempts on record: $(codes "$p")"
	same_requests "$mode: before a rerun" "$p"
	unanswered=$((sent - $(count_code "$p" SUCCESS)))
	no_gateway_blame "$mode" "$TMP/$mode.out"
	expect "$mode: no call is blamed on the gateway's own timeout (local.timeout)" 0 "$(count_code "$p" local.timeout)"
	case $mode in
		cancel)
			expect "cancel: the CALL fails with the cancel's own error" \
				"57014|canceling statement due to user request" \
				"$(line_value "$TMP/$mode.out" SQLSTATE)|$(line_value "$TMP/$mode.out" MESSAGE)"
			expect "cancel: the $WIDTH requests in flight: their answers, or U local.interrupted, committed" \
				"$WIDTH" "$(($(count_code "$p" local.interrupted) + $(count_code "$p" SUCCESS)))"
			r=$(run_of "$pid")
			if [[ "$r" =~ ^interrupted:\ .*user\ request.*\|true$ ]]; then
				ok "cancel: processor_runs shows the run interrupted, finished: $r"
			else
				not_ok "cancel: processor_runs should show the run 'interrupted: ... user request', finished; it has: $r"
			fi
			;;
		terminate)
			expect "terminate: the $WIDTH requests in flight are on record, answered or waiting (local.no_answer_yet, local.interrupted)" \
				"$WIDTH" "$(($(count_code "$p" local.no_answer_yet) + $(count_code "$p" local.interrupted) + $(count_code "$p" SUCCESS)))"
			;;
		stimeout | stimeout2)
			expect "$mode: the CALL fails with the timeout's own error" \
				"57014|canceling statement due to statement timeout" \
				"$(line_value "$TMP/$mode.out" SQLSTATE)|$(line_value "$TMP/$mode.out" MESSAGE)"
			n_cut=$(count_code "$p" local.statement_timeout)
			n_s=$(count_code "$p" SUCCESS)
			expect "$mode: every request sent is answered S or cut as U local.statement_timeout" \
				"$sent" "$((n_cut + n_s))"
			if [ "$n_cut" -ge 1 ]; then
				ok "$mode: the calls cut by the timeout are U local.statement_timeout ($n_cut)"
			else
				not_ok "$mode: no call recorded as cut by the timeout (local.statement_timeout)"
			fi
			if [ $mode = stimeout2 ]; then
				# 2.6 s: the first 64 answers (1.5 s) were in before it fired
				if [ "$n_s" -ge 1 ] && [ "$sent" -gt $WIDTH ]; then
					ok "stimeout2: answers that came in before the timeout are kept ($n_s S), and their slots were refilled ($sent requests)"
				else
					not_ok "stimeout2: expected S answers kept and slots refilled before the 2.6 s timeout: $n_s S, $sent requests"
				fi
				expect "stimeout2: the rows answered S are CANCELLED, committed" "$n_s" \
					"$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED' AND sent_id LIKE '$p'")"
			fi
			r=$(run_of "$pid")
			if [[ "$r" =~ ^interrupted:\ .*statement\ timeout.*\|true$ ]]; then
				ok "$mode: processor_runs shows the run interrupted, finished: $r"
			else
				not_ok "$mode: processor_runs should show the run 'interrupted: ... statement timeout', finished; it has: $r"
			fi
			;;
	esac
	if rerun "$p"; then
		ok "$mode: a rerun settled every row"
	else
		not_ok "$mode: rows still CANCELLING after 60 s of reruns"
	fi
	echo "#   after the rerun: the gateway received $(gw "$p") requests; attempts on record: $(codes "$p")"
	ledger_checks "$mode" "$p"
	# the calls cut short before the rerun are the U attempts now, each
	# completed with its reason; there is no other kind of attempt
	expect "$mode: the $unanswered calls left without an answer are completed as U local.interrupted / local.statement_timeout / local.crashed, the rest S" \
		"$unanswered|$((unanswered + N))" \
		"$(q "$DB" "SELECT count(*) FILTER (WHERE result_status = 'U' AND result_code IN
				('local.interrupted', 'local.statement_timeout', 'local.crashed')) || '|' ||
			count(*) FILTER (WHERE result_status = 'U' AND result_code IN
				('local.interrupted', 'local.statement_timeout', 'local.crashed') OR result_status = 'S')
			FROM alipayplus.cancel_attempts WHERE sent_id LIKE '$p'")"
	case $mode in
		cancel)
			expect "cancel: the interrupted calls are U local.interrupted" "$unanswered" "$(count_code "$p" local.interrupted)"
			;;
		stimeout | stimeout2)
			expect "$mode: the calls cut by the timeout are U local.statement_timeout" "$unanswered" "$(count_code "$p" local.statement_timeout)"
			;;
		terminate)
			expect "terminate: the calls left without an answer are U local.crashed (or local.interrupted)" \
				"$unanswered" "$(($(count_code "$p" local.crashed) + $(count_code "$p" local.interrupted)))"
			r=$(run_of "$pid")
			if [[ "$r" =~ ^ended\ unfinished:\ .*\|true$ ]] || [[ "$r" =~ ^interrupted:\ .*\|true$ ]]; then
				ok "terminate: processor_runs shows the terminated run: $r"
			else
				not_ok "terminate: processor_runs should show the run 'ended unfinished: ...' (or 'interrupted: ...'), finished; it has: $r"
			fi
			;;
	esac
done

# ---------------------------------------------------------------------------
echo "# slowtrig: a slow owner's trigger, statement_timeout = ${TRIG_TIMEOUT_MS}ms: the timeout fires while answers are applied"
q "$DB" "UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
	WHERE state = 'CANCELLING' AND NOT needs_attention" >/dev/null
P="slow-100-trig-%-$TAG"
$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || not_ok "slowtrig: set up"
CREATE TABLE orders (req text PRIMARY KEY, st text NOT NULL DEFAULT 'PENDING');
CREATE FUNCTION slow_trigger() RETURNS trigger LANGUAGE plpgsql AS
\$\$ BEGIN IF NEW.st = 'CANCELLED' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END \$\$;
CREATE TRIGGER slow BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION slow_trigger();
SELECT alipayplus_bind_orders('orders', 'req', 'st', 'CANCELLED', 'CANCELLING');
INSERT INTO orders (req) SELECT 'slow-100-trig-' || i || '-$TAG' FROM generate_series(1, 32) i;
SELECT count(*) FROM generate_series(1, 32) i,
	alipayplus_request_cancel(payment_request_id => 'slow-100-trig-' || i || '-$TAG');
SQL
# the CALL's own duration, measured in its session
$PGBIN/psql -X -q -d "$DB" >"$TMP/trig.out" 2>&1 <<SQL
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SET alipayplus.max_concurrency = $WIDTH;
SELECT clock_timestamp() AS t0 \gset
SET statement_timeout = '${TRIG_TIMEOUT_MS}ms';
CALL alipayplus_run_cancellations(1000, '5 min') /* audit-slowtrig */;
\echo SQLSTATE=:SQLSTATE
\echo MESSAGE=:LAST_ERROR_MESSAGE
RESET statement_timeout;
SELECT 'ELAPSED=' || round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000) AS e \gset
\echo :e
SELECT 'PID=' || pg_backend_pid() AS e \gset
\echo :e
SQL
sed 's/^/#   /' "$TMP/trig.out"
el=$(line_value "$TMP/trig.out" ELAPSED)
tpid=$(line_value "$TMP/trig.out" PID)
expect "slowtrig: the CALL does not return success; it fails with the timeout's own error" \
	"57014|canceling statement due to statement timeout" \
	"$(line_value "$TMP/trig.out" SQLSTATE)|$(line_value "$TMP/trig.out" MESSAGE)"
no_gateway_blame slowtrig "$TMP/trig.out"
if [[ "$el" =~ ^[0-9]+$ ]] && [ "$el" -le $TRIG_BOUND_MS ]; then
	ok "slowtrig: the CALL stopped ${el} ms after it started (statement_timeout ${TRIG_TIMEOUT_MS} ms, bound $TRIG_BOUND_MS ms)"
else
	not_ok "slowtrig: the CALL ran '${el}' ms, past its bound of $TRIG_BOUND_MS ms (statement_timeout ${TRIG_TIMEOUT_MS} ms)"
fi
same_requests "slowtrig: before a rerun" "$P"
expect "slowtrig: before a rerun no ledger row is flagged for a person (the timeout was the caller's, not the orders')" \
	"0" "$(q "$DB" "SELECT count(*) FROM alipayplus.cancellations WHERE needs_attention AND sent_id LIKE '$P'")"
r=$(run_of "$tpid")
if [[ "$r" =~ ^interrupted:\ .*statement\ timeout.*\|true$ ]]; then
	ok "slowtrig: processor_runs shows the run interrupted, finished: $r"
else
	not_ok "slowtrig: processor_runs should show the run 'interrupted: ... statement timeout', finished; it has: $r"
fi
if rerun "$P"; then
	ok "slowtrig: a rerun settled every row"
else
	not_ok "slowtrig: rows still CANCELLING after 60 s of reruns"
fi
same_requests "slowtrig: after the rerun" "$P"
expect "slowtrig: every payment CANCELLED in the ledger, by one S each, nothing left unanswered" \
	"32|32|0" \
	"$(q "$DB" "SELECT (SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLED' AND sent_id LIKE '$P') || '|' ||
		(SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_status = 'S' AND sent_id LIKE '$P') || '|' ||
		(SELECT count(*) FROM alipayplus.cancel_attempts WHERE result_code = 'local.no_answer_yet' AND sent_id LIKE '$P')")"
# an answer whose apply the caller's timeout cut is not a person's work:
# the ledger row is CANCELLED and the next run updates the order (README)
expect "slowtrig: after the rerun every order is CANCELLED, no ledger row flagged, none left to follow" \
	"32|0|0" \
	"$(q "$DB" "SELECT (SELECT count(*) FROM orders WHERE st = 'CANCELLED') || '|' ||
		(SELECT count(*) FROM alipayplus.cancellations WHERE needs_attention AND sent_id LIKE '$P') || '|' ||
		(SELECT count(*) FROM alipayplus.cancellations WHERE order_follow_at IS NOT NULL AND sent_id LIKE '$P')")"

finish
