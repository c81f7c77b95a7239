#!/usr/bin/env bash
# test/dnsstall.sh: a call stuck in a DNS lookup ends promptly on a query
# cancel, a terminate or its own connect timeout (CURLOPT_QUICK_EXIT: libcurl
# does not wait for its resolver thread).
#
# The machine's /etc/resolv.conf is left alone.  A throwaway cluster in
# $RIG/dnsstall (port 54333, unix socket only, configured like the rig's
# for the same keys) runs in a private mount namespace (unshare -m) in which
# /etc/resolv.conf is a bind mount of a file naming one nameserver,
# 127.0.0.77, where a small UDP/TCP listener takes queries and never
# answers ("options timeout:30 attempts:1").  alipayplus.gateway_url names
# a host that is not in /etc/hosts, so getaddrinfo() waits for that
# nameserver: a resolver thread that is waited for would hold the backend
# for 30 s or more.
#
# 1. pg_cancel_backend() while the backend waits (wait_event_type
#    Extension): the client gets 57014 within 2 s, and the same session
#    then runs queries.
# 2. alipayplus.connect_timeout_ms = 500: U local.timeout within 2 s.
# 3. pg_terminate_backend(): the session ends within 2 s.
#
# Run as root from the repository:  bash test/dnsstall.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DIR=$RIG/dnsstall
DPGDATA=$DIR/pgdata
DPORT=54333
DB=apc_dnsstall
NS=127.0.0.77
HOST=stall.alipayplus.test
TAG=$(date +%s%N)
BG_PIDS=()
NS_PID=

# every psql below goes to the throwaway cluster, never to the main one
export PGHOST=$DIR PGPORT=$DPORT PGUSER=postgres PGDATABASE=postgres


pg_ctl_dns() { as_postgres $PGBIN/pg_ctl -D "$DPGDATA" "$@"; }

cleanup() {
	local p
	for p in "${BG_PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	if [ -f "$DPGDATA/postmaster.pid" ]; then
		pg_ctl_dns -m immediate stop >/dev/null 2>&1
	fi
	[ -n "$NS_PID" ] && kill "$NS_PID" 2>/dev/null
}
trap cleanup EXIT

# backend_waiting ID: pid of the backend whose query mentions ID, once it
# waits in the extension (10 s at most); empty if none
backend_waiting() {
	local deadline=$(($(now_ms) + 10000)) pid=""
	while [ "$(now_ms)" -lt $deadline ]; do
		pid=$(q "$DB" "SELECT pid FROM pg_stat_activity
			WHERE query LIKE '%$1%' AND pid <> pg_backend_pid() AND state = 'active'
				AND wait_event_type = 'Extension' LIMIT 1")
		[ -n "$pid" ] && break
		sleep 0.05
	done
	echo "$pid"
}

# call_bg NAME ID SQL...: in the background, run the SQL (settings, say)
# then a call for ID; output in $DIR/NAME.out; sets BG
call_bg() {
	local name=$1 id=$2
	shift 2
	{
		printf '%s\n' "$@"
		echo "SELECT 'CALL=' || result_status || '/' || result_code FROM alipayplus_cancel_payment(payment_request_id => '$id');"
		echo "\\echo AFTER=:SQLSTATE"
		echo "SELECT 'SESSION_ALIVE=' || 1;"
	} | $PGBIN/psql -X -q -d "$DB" -v VERBOSITY=verbose -P tuples_only=on -P format=unaligned \
		>"$DIR/$name.out" 2>&1 &
	BG=$!
	BG_PIDS+=("$BG")
}

if ! unshare -m --propagation private true 2>/dev/null; then
	ok "# SKIP cannot make a mount namespace here (unshare -m)"
	finish
fi
if getent hosts "$HOST" >/dev/null; then
	not_ok "$HOST resolves on this machine; the test needs a name that is not in /etc/hosts"
	finish
fi

# ---------------------------------------------------------------------------
echo "# a nameserver that never answers, on $NS:53"
rm -rf "$DIR"
mkdir -p "$DIR"
chown postgres:postgres "$DIR"
$PY - "$NS" >"$DIR/blackhole.out" 2>&1 9>&- <<'PY' &
import socket, sys, threading, time
addr = (sys.argv[1], 53)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(addr)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(addr)
t.listen(16)
held = []
def tcp():
    while True:
        held.append(t.accept()[0])   # accept and never answer
threading.Thread(target=tcp, daemon=True).start()
print("listening", flush=True)
while True:
    u.recvfrom(65535)                # take the query and never answer
PY
NS_PID=$!
for _ in $(seq 1 50); do
	grep -q listening "$DIR/blackhole.out" 2>/dev/null && break
	sleep 0.1
done
if grep -q listening "$DIR/blackhole.out"; then
	ok "silent nameserver listening on $NS:53"
else
	not_ok "silent nameserver did not start: $(cat "$DIR/blackhole.out")"
	finish
fi
printf 'nameserver %s\noptions timeout:30 attempts:1\n' "$NS" >"$DIR/resolv.conf"
chmod 0644 "$DIR/resolv.conf"

# ---------------------------------------------------------------------------
echo "# a throwaway cluster in $DIR on port $DPORT, in a mount namespace with that resolv.conf"
init_cluster "$DPGDATA" "$DPORT" "$DIR" </dev/null || { not_ok "initdb"; finish; }
echo "alipayplus.gateway_url = 'https://$HOST:443'" >>"$DPGDATA/postgresql.conf"
# the namespace lives as long as the postmaster does; the sanity check
# inside it shows that a lookup of $HOST stalls there
unshare -m --propagation private sh -c '
	mount --bind "$1/resolv.conf" /etc/resolv.conf || exit 1
	start=$(date +%s%N)
	timeout 2 getent ahosts "$2" >/dev/null
	echo "$? $(( ($(date +%s%N) - start) / 1000000 ))" >"$1/getent.out"
	exec runuser -u postgres -- "$3/pg_ctl" -D "$1/pgdata" -l "$1/postgres.log" -w start
' dnsstall "$DIR" "$HOST" "$PGBIN" 9>&- >/dev/null ||
	{ not_ok "start the cluster in a mount namespace"; finish; }
read -r rc ms <"$DIR/getent.out"
if [ "$rc" = 124 ]; then
	ok "in the namespace a lookup of $HOST stalls (getent killed after $ms ms)"
else
	not_ok "in the namespace a lookup of $HOST did not stall (getent exit $rc after $ms ms)"
fi
if cmp -s /etc/resolv.conf "$DIR/resolv.conf"; then
	not_ok "the machine's /etc/resolv.conf looks replaced outside the namespace"
else
	ok "the machine's /etc/resolv.conf is untouched outside the namespace"
fi
q postgres "CREATE DATABASE $DB" >/dev/null && q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null ||
	{ not_ok "create database and extension"; finish; }
ok "cluster up"

LONG="SET alipayplus.connect_timeout_ms = 60000; SET alipayplus.timeout_ms = 60000;"

# ---------------------------------------------------------------------------
echo "# 1. pg_cancel_backend during the lookup"
call_bg cancel "dns-cancel-$TAG" "$LONG"
BACKEND=$(backend_waiting "dns-cancel-$TAG")
if [[ "$BACKEND" =~ ^[0-9]+$ ]]; then
	ok "cancel: backend $BACKEND waits in the extension"
	sleep 0.5
	t0=$(now_ms)
	q "$DB" "SELECT pg_cancel_backend($BACKEND)" >/dev/null
	if wait_exit "$BG" 10; then
		took=$(($(now_ms) - t0))
		if [ $took -lt 2000 ]; then
			ok "cancel: the client returned $took ms after the cancel (< 2 s)"
		else
			not_ok "cancel: the client returned only $took ms after the cancel"
		fi
	else
		not_ok "cancel: the client still waits 10 s after the cancel (the resolver thread is waited for)"
	fi
	sed 's/^/#   /' "$DIR/cancel.out"
	expect "cancel: SQLSTATE 57014" 57014 "$(sed -n 's/^AFTER=//p' "$DIR/cancel.out")"
	expect "cancel: the same session runs queries afterwards" "SESSION_ALIVE=1" \
		"$(grep '^SESSION_ALIVE=' "$DIR/cancel.out")"
else
	not_ok "cancel: found no backend waiting in the extension"
fi

# ---------------------------------------------------------------------------
echo "# 2. the connect timeout expires during the lookup"
t0=$(now_ms)
call_bg timeout "dns-timeout-$TAG" "$LONG" "SET alipayplus.connect_timeout_ms = 500;"
if wait_exit "$BG" 15; then
	took=$(($(now_ms) - t0))
	if [ $took -lt 2000 ]; then
		ok "timeout: the call returned $took ms after it started (connect timeout 500 ms; < 2 s)"
	else
		not_ok "timeout: the call returned only $took ms after it started (connect timeout 500 ms)"
	fi
else
	not_ok "timeout: the call still runs 15 s after it started (connect timeout 500 ms)"
fi
sed 's/^/#   /' "$DIR/timeout.out"
expect "timeout: U local.timeout" "CALL=U/local.timeout" "$(grep '^CALL=' "$DIR/timeout.out")"

# ---------------------------------------------------------------------------
echo "# 3. pg_terminate_backend during the lookup"
call_bg terminate "dns-terminate-$TAG" "$LONG"
BACKEND=$(backend_waiting "dns-terminate-$TAG")
if [[ "$BACKEND" =~ ^[0-9]+$ ]]; then
	sleep 0.5
	t0=$(now_ms)
	q "$DB" "SELECT pg_terminate_backend($BACKEND)" >/dev/null
	if wait_exit "$BG" 10; then
		took=$(($(now_ms) - t0))
		if [ $took -lt 2000 ]; then
			ok "terminate: the session ended $took ms after pg_terminate_backend (< 2 s)"
		else
			not_ok "terminate: the session ended only $took ms after pg_terminate_backend"
		fi
	else
		not_ok "terminate: the client still waits 10 s after pg_terminate_backend"
	fi
	sed 's/^/#   /' "$DIR/terminate.out"
	if grep -q "57P01" "$DIR/terminate.out"; then
		ok "terminate: 57P01"
	else
		not_ok "terminate: no 57P01 in the client output"
	fi
else
	not_ok "terminate: found no backend waiting in the extension"
fi

# ---------------------------------------------------------------------------
if pg_ctl_dns -m fast -w stop >/dev/null; then
	ok "cluster stopped"
else
	not_ok "stop the cluster"
fi
kill "$NS_PID" 2>/dev/null
NS_PID=
[ "$checks_failed" -eq 0 ] && rm -rf "$DIR"
finish
