#!/usr/bin/env bash
# bench/run.sh [--publish]: throughput of signed cancelPayment calls, one
# table from one run against the rig's fake gateway, with an added gateway
# latency of 0 and of 100 ms.
#
# Rows: openssl speed rsa2048 (signatures per second on one core: the floor
# of any signed client); bench/bare_client.c (libcurl and OpenSSL with
# nothing else: sign, send, verify; the ceiling this machine leaves) one at
# a time and with 1, 4, 16, 64 and 256 calls in flight; the extension one
# call at a time (alipayplus_cancel_payment, ledger included) and its
# processor at the same concurrencies (alipayplus.max_concurrency); the same
# work in PL/Python the way a DBA would write it without the extension,
# carefully (one kept-alive connection and the key parsed once per session)
# and naively (a new connection and a key parse per call); the gateway's own
# capacity; the peak memory of the processor's backend; the background
# worker (alipayplus.database_name, serving database bench_worker) at the
# same concurrencies, from the COMMIT of alipayplus_request_cancel_all to
# the last row visible as CANCELLED, and its commit-to-CANCELLED latency
# (p50/p95/max over WORKER_LATENCY_N, default 30, requests each committed
# alone, the gateway answering S at once).  Then the issue's
# targets, in BENCH_ROUNDS (default 5) interleaved rounds, as median ratios.
# The figures go to $RIG/bench/results.csv and targets.csv (targets.txt the
# table) and a plot to $RIG/bench/throughput.png (gnuplot); with --publish
# they are copied to docs/bench/ for the README.
#
# Sets up the rig itself (scripts/lib.sh) and installs what it needs
# (gnuplot-nox, postgresql-plpython3-15) with apt-get.  Takes a few minutes.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

PUBLISH=${1:-}
# what the benchmark needs besides the rig; rig_up installs it with apt-get
PACKAGES="$PACKAGES gnuplot-nox postgresql-plpython3-15"

rig_up
# the background worker serves database bench_worker (created below); the
# rig's cluster preloads the library already, the setting needs a restart
psql_rig -q -d postgres -c "ALTER SYSTEM SET alipayplus.database_name = 'bench_worker'"
as_postgres $PGBIN/pg_ctl -D "$RIG/pgdata" -l "$RIG/postgres.log" -w restart >/dev/null
OUT=$RIG/bench
mkdir -p "$OUT"
K=$RIG/keys
GW=https://localhost:$(cat "$RIG/gateway.port")
CSV=$OUT/results.csv
echo "client,latency_ms,in_flight,calls,seconds,calls_per_s" >"$CSV"

say "building the bare client"
gcc -O2 -Wall -Wextra -Werror -o "$OUT/bare_client" "$REPO/bench/bare_client.c" \
	$(pkg-config --cflags --libs libcurl openssl)

record() {	# client latency in_flight calls seconds
	local rate
	rate=$(awk -v n="$4" -v s="$5" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }')
	echo "$1,$2,$3,$4,$5,$rate" >>"$CSV"
	printf '  %-22s latency %3s ms  in flight %-4s %6s calls  %8.3f s  %9s calls/s\n' "$1" "$2" "$3" "$4" "$5" "$rate"
}

# how many calls a measurement makes: enough to last about a second or two
calls_for() {	# latency in_flight
	if [ "$1" = 0 ]; then
		echo 1500
	else
		local n=$((20 * $2))
		[ "$n" -lt 30 ] && n=30
		[ "$n" -gt 2000 ] && n=2000
		echo "$n"
	fi
}
prefix_for() { [ "$1" = 0 ] && echo "bench" || echo "slow-$1-bench"; }

say "openssl speed rsa2048 (one core)"
sign_s=$(openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ {print $(NF-1)}')
echo "  $sign_s signatures/s"
echo "openssl sign (floor),0,1,0,0,$sign_s" >>"$CSV"

# The measurements; each prints "calls seconds".
bare() {	# latency in_flight calls
	local calls good secs rate
	read -r calls good secs rate < <("$OUT/bare_client" "$GW" "$CLIENT_ID" "$K/client.pem" \
		"$K/gateway_pub.pem" "$K/ca.pem" "$(prefix_for "$1")-bare-$2-$RANDOM" "$3" "$2")
	[ "$good" = "$calls" ] || echo "  warning: only $good of $calls verified S" >&2
	echo "$calls $secs"
}

say "the bare client (libcurl + OpenSSL, no database)"
for lat in 0 100; do
	for c in 1 4 16 64 256; do
		read -r calls secs < <(bare $lat $c "$(calls_for $lat $c)")
		record bare $lat $c "$calls" "$secs"
	done
done
gateway=$(awk -F, '$1 == "bare" && $2 == 0 {if ($6 > m) m = $6} END {print m}' "$CSV")
echo "gateway capacity (its best answer rate to the bare client),0,-,0,0,$gateway" >>"$CSV"

say "the extension"
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
psql_rig -q -d bench -c "CREATE EXTENSION alipayplus_cancel" -c "CREATE EXTENSION plpython3u"

coproc PSQL { $PGBIN/psql -X -qAt -d bench 2>&1; }
pid=$(ask "SELECT pg_backend_pid();")
ask "SELECT count(*) FROM alipayplus_cancel_payment(payment_request_id => 'bench-warmup-$RANDOM');" >/dev/null
ext_sequential() {	# latency calls
	echo "$2 $(ask "SELECT extract(epoch FROM clock_timestamp()) AS t \\gset
		SELECT count(*) FROM generate_series(1, $2) i,
			LATERAL alipayplus_cancel_payment(payment_request_id => '$(prefix_for "$1")-seq-$RANDOM-' || i) r
			WHERE r.state = 'CANCELLED' \\g /dev/null
		SELECT round((extract(epoch FROM clock_timestamp()) - :t)::numeric, 3);")"
}
ext_processor() {	# latency in_flight calls
	local tag
	tag="$(prefix_for "$1")-ext-$2-$RANDOM"
	ask "SET alipayplus.max_concurrency = $2;" >/dev/null
	ask "SELECT count(*) FROM alipayplus_request_cancel_all(ARRAY(SELECT '$tag-' || i FROM generate_series(1, $3) i));" >/dev/null
	ask "SELECT claimed || ' ' || round(elapsed_ms / 1000.0, 3) FROM alipayplus_process_cancellations($3, '30 minutes');"
}
# the CALL form (alipayplus_run_cancellations: the pipeline committing as
# it goes), timed from outside, the psql connection included
ext_call() {	# latency in_flight calls
	local tag t0 t1 done
	tag="$(prefix_for "$1")-call-$2-$RANDOM"
	psql_rig -qAt -d bench -c "SELECT count(*) FROM alipayplus_request_cancel_all(ARRAY(SELECT '$tag-' || i FROM generate_series(1, $3) i))" >/dev/null
	t0=$EPOCHREALTIME
	PGOPTIONS="-c alipayplus.max_concurrency=$2" psql_rig -qAt -d bench -c "CALL alipayplus_run_cancellations($3, '30 minutes')"
	t1=$EPOCHREALTIME
	done=$(psql_rig -qAt -d bench -c "SELECT count(*) FROM alipayplus.cancellations WHERE sent_id LIKE '$tag-%' AND state = 'CANCELLED'")
	echo "$done $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
}
for lat in 0 100; do
	n=$(calls_for $lat 1)
	[ "$lat" = 0 ] && n=500
	read -r calls secs < <(ext_sequential $lat "$n")
	record "extension sequential" $lat 1 "$calls" "$secs"
	for c in 1 4 16 64 256; do
		read -r calls secs < <(ext_processor $lat $c "$(calls_for $lat $c)")
		record "extension processor" $lat $c "$calls" "$secs"
		read -r calls secs < <(ext_call $lat $c "$(calls_for $lat $c)")
		record "extension CALL" $lat $c "$calls" "$secs"
	done
done
hwm=$(awk '/VmHWM/ {print $2}' /proc/"$pid"/status)
echo "peak memory of the processor's backend (VmHWM kB),-,-,0,0,$hwm" >>"$CSV"

say "the background worker (database bench_worker)"
psql_rig -q -d postgres -c "DROP DATABASE IF EXISTS bench_worker" -c "CREATE DATABASE bench_worker"
psql_rig -q -d bench_worker -c "CREATE EXTENSION alipayplus_cancel"
# the worker's concurrency: a server-wide setting, read by the worker on SIGHUP
worker_concurrency() {	# in_flight
	psql_rig -qAt -d postgres -c "ALTER SYSTEM SET alipayplus.max_concurrency = $1" \
		-c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
}
# queue CALLS rows in one transaction; the time from just before its COMMIT
# until the last of them is visible as CANCELLED.  The watcher commits
# between its looks (every 10 ms): one transaction held open over the whole
# run would hold back the xmin horizon, so that no page of the ledger could
# be pruned of the versions the worker's own updates leave, and the worker
# would be measured against a load the CALL form and the bare client never
# see (measured: about a quarter slower, falling from round to round).
ext_worker() {	# latency in_flight calls
	local tag
	tag="$(prefix_for "$1")-wk-$2-$RANDOM"
	worker_concurrency "$2"
	echo "$3 $(psql_rig -qAt -d bench_worker <<SQL
BEGIN;
SELECT count(*) FROM alipayplus_request_cancel_all(ARRAY(SELECT '$tag-' || i FROM generate_series(1, $3) i)) \g /dev/null
SELECT min(cancellation_id) AS lo, max(cancellation_id) AS hi FROM alipayplus.cancellations
	WHERE payment_request_id IN ('$tag-1', '$tag-$3') \gset
SELECT extract(epoch FROM clock_timestamp()) AS t \gset
COMMIT;
SELECT format('DO \$d\$ BEGIN WHILE EXISTS (SELECT FROM alipayplus.cancellations'
	' WHERE cancellation_id BETWEEN %s AND %s AND state <> %L) LOOP COMMIT; PERFORM pg_sleep(0.01);'
	' END LOOP; END \$d\$', :lo, :hi, 'CANCELLED') \gexec
SELECT round((extract(epoch FROM clock_timestamp()) - :t)::numeric, 3);
SQL
)"
}
for lat in 0 100; do
	for c in 1 4 16 64 256; do
		read -r calls secs < <(ext_worker $lat $c "$(calls_for $lat $c)")
		record "extension worker" $lat $c "$calls" "$secs"
	done
done

# commit-to-CANCELLED: each request committed alone, after the previous one
# is CANCELLED; timed from just before its COMMIT until its row is visible
# as CANCELLED to another session (polled every millisecond)
WORKER_LATENCY_N=${WORKER_LATENCY_N:-30}
worker_latency() {	# requests; prints "p50 p95 max" in ms
	worker_concurrency 16
	psql_rig -qAt -d bench_worker <<SQL
CREATE TEMP TABLE latency (ms float8);
DO \$\$
DECLARE
	t0 timestamptz;
	id text;
BEGIN
	FOR i IN 1 .. $1 LOOP
		id := 'bench-latency-$RANDOM-' || i;
		PERFORM alipayplus_request_cancel(payment_request_id => id);
		t0 := clock_timestamp();
		COMMIT;
		WHILE NOT EXISTS (SELECT FROM alipayplus.cancellations
				WHERE payment_request_id = id AND state = 'CANCELLED') LOOP
			PERFORM pg_sleep(0.001);
		END LOOP;
		INSERT INTO latency VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000);
		COMMIT;
	END LOOP;
END \$\$;
SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' ' ||
	round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' ' ||
	round(max(ms)::numeric, 1) FROM latency;
SQL
}
read -r lat_p50 lat_p95 lat_max < <(worker_latency "$WORKER_LATENCY_N")
printf '  commit to CANCELLED over %s requests committed alone: p50 %s ms, p95 %s ms, max %s ms\n' \
	"$WORKER_LATENCY_N" "$lat_p50" "$lat_p95" "$lat_max"
LCSV=$OUT/worker_latency.csv
echo "requests,p50_ms,p95_ms,max_ms" >"$LCSV"
echo "$WORKER_LATENCY_N,$lat_p50,$lat_p95,$lat_max" >>"$LCSV"

say "PL/Python, written without the extension"
psql_rig -q -d bench <<SQL
CREATE FUNCTION bench_plpy_cancel(request_id text, careful boolean) RETURNS text
LANGUAGE plpython3u AS \$py\$
import base64, datetime, http.client, json, ssl, urllib.parse
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
keys = "$K"
host, port = "localhost", $(cat "$RIG/gateway.port")
path = "/aps/api/v1/payments/cancelPayment"
client_id = "$CLIENT_ID"
def load():
    with open(keys + "/client.pem", "rb") as f:
        priv = serialization.load_pem_private_key(f.read(), None)
    with open(keys + "/gateway_pub.pem", "rb") as f:
        pub = serialization.load_pem_public_key(f.read())
    return priv, pub
def connect():
    ctx = ssl.create_default_context(cafile=keys + "/ca.pem")
    return http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
if careful:
    if "keys" not in SD:
        SD["keys"] = load()
        SD["conn"] = connect()
    priv, pub = SD["keys"]
    conn = SD["conn"]
else:
    priv, pub = load()
    conn = connect()
body = json.dumps({"paymentRequestId": request_id}, separators=(",", ":"))
now = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=8))).isoformat(timespec="seconds")
content = ("POST %s\n%s.%s.%s" % (path, client_id, now, body)).encode()
sig = base64.b64encode(priv.sign(content, padding.PKCS1v15(), hashes.SHA256())).decode()
conn.request("POST", path, body=body, headers={
    "Content-Type": "application/json; charset=UTF-8", "Client-Id": client_id,
    "Request-Time": now,
    "Signature": "algorithm=RSA256,keyVersion=1,signature=" + urllib.parse.quote(sig, safe="")})
resp = conn.getresponse()
data = resp.read()
if not careful:
    conn.close()
header = resp.getheader("Signature") or ""
value = urllib.parse.unquote(header.split("signature=", 1)[-1])
signed = ("POST %s\n%s.%s." % (path, resp.getheader("Client-Id"), resp.getheader("Response-Time"))).encode() + data
pub.verify(base64.b64decode(value), signed, padding.PKCS1v15(), hashes.SHA256())
return json.loads(data)["result"]["resultStatus"]
\$py\$;
SQL
plpython() {	# latency careful calls
	echo "$3 $(psql_rig -qAt -d bench <<SQL
SELECT bench_plpy_cancel('$(prefix_for "$1")-plpy-warm-$RANDOM', $2) \g /dev/null
SELECT extract(epoch FROM clock_timestamp()) AS t \gset
SELECT count(*) FROM generate_series(1, $3) i
	WHERE bench_plpy_cancel('$(prefix_for "$1")-plpy-$2-$RANDOM-' || i, $2) = 'S' \g /dev/null
SELECT round((extract(epoch FROM clock_timestamp()) - :t)::numeric, 3);
SQL
)"
}
for lat in 0 100; do
	for careful in true false; do
		if [ "$lat" = 0 ]; then n=300; else n=30; fi
		read -r calls secs < <(plpython $lat $careful "$n")
		name="PL/Python careful"
		[ "$careful" = false ] && name="PL/Python naive"
		record "$name" $lat 1 "$calls" "$secs"
	done
done

# The issue's targets, measured in interleaved rounds: each round runs the
# clients a target compares one right after the other, so that the ratio
# of a round is taken under the same conditions (this machine's speed
# drifts by tens of percent within minutes); the table shows the median
# ratio over the rounds.
ROUNDS=${BENCH_ROUNDS:-5}
say "the targets: $ROUNDS interleaved rounds"
TCSV=$OUT/targets.csv
echo "round,bare_seq,ext_seq,plpy_careful_seq,bare_100_64,processor_100_64,call_100_64,bare_100_256,call_100_256,worker_100_64,worker_100_256" >"$TCSV"
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }'; }
for r in $(seq 1 "$ROUNDS"); do
	b=$(rate $(bare 0 1 1000))
	e=$(rate $(ext_sequential 0 1000))
	p=$(rate $(plpython 0 true 1000))
	b100=$(rate $(bare 100 64 1280))
	p100=$(rate $(ext_processor 100 64 1280))
	c100=$(rate $(ext_call 100 64 1280))
	b256=$(rate $(bare 100 256 2560))
	c256=$(rate $(ext_call 100 256 2560))
	w100=$(rate $(ext_worker 100 64 1280))
	w256=$(rate $(ext_worker 100 256 2560))
	echo "$r,$b,$e,$p,$b100,$p100,$c100,$b256,$c256,$w100,$w256" >>"$TCSV"
	printf '  round %s: bare %s/s, extension %s/s, careful PL/Python %s/s (0 ms, one by one); bare %s/s, processor %s/s, CALL %s/s (100 ms, 64 in flight); bare %s/s, CALL %s/s (100 ms, 256)\n' \
		"$r" "$b" "$e" "$p" "$b100" "$p100" "$c100" "$b256" "$c256"
	printf '  round %s: worker %s/s (100 ms, 64 in flight), %s/s (256)\n' "$r" "$w100" "$w256"
done
seq100=$(awk -F, '$1 == "extension sequential" && $2 == 100 {print $6}' "$CSV")
plpy100=$(awk -F, '$1 == "PL/Python careful" && $2 == 100 {print $6}' "$CSV")
TARGETS=$OUT/targets.txt
awk -F, -v seq100="$seq100" -v plpy100="$plpy100" \
	-v lat_n="$WORKER_LATENCY_N" -v lat_p95="$lat_p95" -v lat_max="$lat_max" '
function median(a, n,    i, j, t) {
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
NR > 1 {
	n++
	r1[n] = $3 / $2; r2[n] = $3 / $4; r3[n] = $6 / $5; r4[n] = $6 / seq100; r5[n] = $6 / plpy100
	r6[n] = $7 / $5; r7[n] = $9 / $8; r8[n] = $10 / $5; r9[n] = $11 / $8
}
function row(what, v, goal, ok, fmt) {
	printf "%-62s %10s %8s %s\n", what, sprintf(fmt, v), goal, ok ? "met" : "NOT met"
}
END {
	printf "%-62s %10s %8s %s\n", "target (median of " n " rounds)", "measured", "goal", ""
	row("one by one, 0 ms: extension / bare client", 100 * median(r1, n), ">= 80%", median(r1, n) >= 0.8, "%.0f%%")
	row("one by one, 0 ms: extension / careful PL/Python", median(r2, n), ">= 1x", median(r2, n) >= 1, "%.2fx")
	row("100 ms, 64 in flight: processor / bare client", 100 * median(r3, n), ">= 60%", median(r3, n) >= 0.6, "%.0f%%")
	row("100 ms, 64 in flight: processor / extension one by one", median(r4, n), ">= 30x", median(r4, n) >= 30, "%.0fx")
	row("100 ms, 64 in flight: processor / careful PL/Python", median(r5, n), ">= 30x", median(r5, n) >= 30, "%.0fx")
	row("100 ms, 64 in flight: processor (CALL) / bare client", 100 * median(r6, n), ">= 80%", median(r6, n) >= 0.8, "%.0f%%")
	row("100 ms, 256 in flight: processor (CALL) / bare client", 100 * median(r7, n), ">= 85%", median(r7, n) >= 0.85, "%.0f%%")
	row("100 ms, 64 in flight: background worker / bare client", 100 * median(r8, n), ">= 80%", median(r8, n) >= 0.8, "%.0f%%")
	row("100 ms, 256 in flight: background worker / bare client", 100 * median(r9, n), ">= 85%", median(r9, n) >= 0.85, "%.0f%%")
	row("worker, commit to CANCELLED, p95 of " lat_n " (0 ms gateway)", lat_p95, "<= 50 ms", lat_p95 <= 50, "%.1f ms")
	row("worker, commit to CANCELLED, max of " lat_n " (0 ms gateway)", lat_max, "<= 250 ms", lat_max <= 250, "%.1f ms")
}' "$TCSV" >"$TARGETS"


say "the plot"
rm -f "$OUT"/series-*.dat
awk -F, -v out="$OUT" 'NR > 1 && ($2 == 0 || $2 == 100) && $3 != "-" {
	name = $1; gsub(/[^a-zA-Z]+/, "_", name)
	print > (out "/series-" $2 "-" name ".dat")
}' "$CSV"
gnuplot <<GP
set terminal pngcairo size 1100,480 font ",10"
set output "$OUT/throughput.png"
set datafile separator ","
set multiplot layout 1,2 title "signed cancelPayment calls per second on this machine (fake gateway on loopback)"
set logscale x 2
set logscale y 10
set xrange [0.8:320]
set yrange [1:10000]
set xlabel "calls in flight"
set ylabel "calls per second"
set key bottom right
set grid
do for [lat in "0 100"] {
	set title sprintf("gateway latency %s ms", lat)
	plot "$OUT/series-".lat."-bare.dat" using 3:6 with linespoints title "bare libcurl + OpenSSL", \
	     "$OUT/series-".lat."-extension_processor.dat" using 3:6 with linespoints title "extension (processor)", \
	     "$OUT/series-".lat."-extension_worker.dat" using 3:6 with linespoints title "extension (background worker)", \
	     "$OUT/series-".lat."-extension_sequential.dat" using 3:6 with points pt 7 ps 1.5 title "extension, one by one", \
	     "$OUT/series-".lat."-PL_Python_careful.dat" using 3:6 with points pt 5 ps 1.5 title "PL/Python careful", \
	     "$OUT/series-".lat."-PL_Python_naive.dat" using 3:6 with points pt 9 ps 1.5 title "PL/Python naive", \
	     $sign_s with lines dashtype 2 title "openssl rsa2048 sign/s (floor)"
}
unset multiplot
GP

say "results ($(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), $($PGBIN/postgres --version))"
column -s, -t "$CSV"
echo
cat "$TARGETS"
echo
echo "figures: $CSV, $TCSV, $LCSV"
echo "plot: $OUT/throughput.png"
if [ "$PUBLISH" = --publish ]; then
	mkdir -p "$REPO/docs/bench"
	cp "$CSV" "$TCSV" "$LCSV" "$TARGETS" "$OUT/throughput.png" "$REPO/docs/bench/"
	echo "copied to docs/bench/"
fi
rig_stop
