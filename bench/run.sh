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
# capacity; the peak memory of the processor's backend.  The figures go to
# $RIG/bench/results.csv and a plot to $RIG/bench/throughput.png (gnuplot);
# with --publish both are copied to docs/bench/ for the README.
#
# Sets up the rig itself (scripts/lib.sh) and installs what it needs
# (gnuplot-nox, postgresql-plpython3-15) with apt-get.  Takes a few minutes.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

PUBLISH=${1:-}
# what the benchmark needs besides the rig; rig_up installs it with apt-get
PACKAGES="$PACKAGES gnuplot-nox postgresql-plpython3-15"

rig_up
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

say "the bare client (libcurl + OpenSSL, no database)"
for lat in 0 100; do
	for c in 1 4 16 64 256; do
		n=$(calls_for $lat $c)
		read -r calls good secs rate < <("$OUT/bare_client" "$GW" "$CLIENT_ID" "$K/client.pem" \
			"$K/gateway_pub.pem" "$K/ca.pem" "$(prefix_for $lat)-bare-$c-$RANDOM" "$n" "$c")
		[ "$good" = "$calls" ] || echo "  warning: only $good of $calls verified S" >&2
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
for lat in 0 100; do
	n=$(calls_for $lat 1)
	[ "$lat" = 0 ] && n=500
	secs=$(ask "SELECT extract(epoch FROM clock_timestamp()) AS t \\gset
		SELECT count(*) FROM generate_series(1, $n) i,
			LATERAL alipayplus_cancel_payment(payment_request_id => '$(prefix_for $lat)-seq-$RANDOM-' || i) r
			WHERE r.state = 'CANCELLED' \\g /dev/null
		SELECT round((extract(epoch FROM clock_timestamp()) - :t)::numeric, 3);")
	record "extension sequential" $lat 1 "$n" "$secs"
	for c in 1 4 16 64 256; do
		n=$(calls_for $lat $c)
		tag="$(prefix_for $lat)-ext-$c-$RANDOM"
		ask "SET alipayplus.max_concurrency = $c;" >/dev/null
		ask "SELECT count(*) FROM alipayplus_request_cancel_all(ARRAY(SELECT '$tag-' || i FROM generate_series(1, $n) i));" >/dev/null
		res=$(ask "SELECT claimed || ' ' || round(elapsed_ms / 1000.0, 3) FROM alipayplus_process_cancellations($n, '30 minutes');")
		record "extension processor" $lat $c ${res% *} ${res#* }
	done
done
hwm=$(awk '/VmHWM/ {print $2}' /proc/"$pid"/status)
echo "peak memory of the processor's backend (VmHWM kB),-,-,0,0,$hwm" >>"$CSV"

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
for lat in 0 100; do
	for careful in true false; do
		if [ "$lat" = 0 ]; then n=300; else n=30; fi
		secs=$(psql_rig -qAt -d bench <<SQL
SELECT extract(epoch FROM clock_timestamp()) AS t \gset
SELECT bench_plpy_cancel('$(prefix_for $lat)-plpy-warm-$RANDOM', $careful) \g /dev/null
SELECT extract(epoch FROM clock_timestamp()) AS t \gset
SELECT count(*) FROM generate_series(1, $n) i
	WHERE bench_plpy_cancel('$(prefix_for $lat)-plpy-$careful-$RANDOM-' || i, $careful) = 'S' \g /dev/null
SELECT round((extract(epoch FROM clock_timestamp()) - :t)::numeric, 3);
SQL
)
		name="PL/Python careful"
		[ "$careful" = false ] && name="PL/Python naive"
		record "$name" $lat 1 "$n" "$secs"
	done
done

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
echo "figures: $CSV"
echo "plot: $OUT/throughput.png"
if [ "$PUBLISH" = --publish ]; then
	mkdir -p "$REPO/docs/bench"
	cp "$CSV" "$OUT/throughput.png" "$REPO/docs/bench/"
	echo "copied to docs/bench/"
fi
rig_stop
