#!/usr/bin/env bash
# test/pooler.sh: the extension behind PgBouncer in transaction pooling
# (Debian's pgbouncer, on loopback, one server connection for every client,
# so that clients take turns on one backend as they would under load).
#
# 1. Client A leaves a temporary table (and the composite type that comes
#    with it) on the shared server connection, as transaction pooling lets
#    any client do.  Client B, another application, then requests a
#    cancellation on that same backend.
#    a. PgBouncer's default set-up (the reset query only in session
#       pooling): B gets the ledger's clear 55000 refusal, whose hint names
#       the reset settings; nothing crashes, A's table is still there, the
#       order untouched.
#    b. The supported set-up, server_reset_query = DISCARD ALL with
#       server_reset_query_always = 1: A's temporary table is gone when A's
#       transaction ends, and B's cancellation and the processor go through.
# 2. What the README's "Connection poolers" section says about session
#    state: with the default set-up a plain SET (of alipayplus.* as of any
#    setting) and SET ROLE leak to the next client of the server
#    connection, SET LOCAL and SET LOCAL ROLE do not; with the reset
#    settings nothing leaks.
#
# Needs the rig up (scripts/lib.sh) and the pgbouncer package.
# Run as root from the repository:  bash test/pooler.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_pool
DIR=$RIG/pooler
PORT=${ALIPAYPLUS_POOLER_PORT:-54336}
TAG=$(date +%s%N)
PGBOUNCER=/usr/sbin/pgbouncer

stop_bouncer() {
	if [ -f "$DIR/pgbouncer.pid" ]; then
		local pid
		pid=$(cat "$DIR/pgbouncer.pid")
		kill "$pid" 2>/dev/null
		for _ in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		rm -f "$DIR/pgbouncer.pid"
	fi
}
cleanup() {
	stop_bouncer
	q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	q postgres "DROP ROLE IF EXISTS apc_pool_owner" >/dev/null 2>&1
	q postgres "DROP ROLE IF EXISTS apc_pool_app" >/dev/null 2>&1
}
trap cleanup EXIT

[ -x $PGBOUNCER ] || { not_ok "pgbouncer is not installed (apt-get install pgbouncer)"; finish; }
cleanup

# the shop: a non-superuser owner with an audit trigger that uses an
# unqualified name, an application role with EXECUTE only
q postgres "CREATE DATABASE $DB" >/dev/null
psql_rig -q -d $DB >/dev/null <<SQL
CREATE ROLE apc_pool_owner;
CREATE ROLE apc_pool_app LOGIN;
CREATE EXTENSION alipayplus_cancel;
CREATE SCHEMA shop AUTHORIZATION apc_pool_owner;
GRANT USAGE ON SCHEMA shop TO apc_pool_app;
SET ROLE apc_pool_owner;
CREATE TABLE shop.orders (id int PRIMARY KEY, req text UNIQUE NOT NULL, status text NOT NULL DEFAULT 'NEW');
CREATE TABLE shop.audit (id int, status text, saw_scratch boolean);
CREATE FUNCTION shop.audit_trigger() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	-- unqualified names, resolved through the owner's search_path
	INSERT INTO audit VALUES (NEW.id, NEW.status, to_regclass('scratch') IS NOT NULL);
	RETURN NEW;
END;
\$\$;
CREATE TRIGGER audit AFTER UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.audit_trigger();
INSERT INTO shop.orders VALUES (1, 'pool-1-$TAG'), (2, 'pool-2-$TAG');
GRANT SELECT ON shop.orders TO apc_pool_app;
RESET ROLE;
ALTER ROLE apc_pool_owner SET search_path = shop, public;
SELECT alipayplus_bind_orders('shop.orders', 'req', 'status', 'CANCELLED', 'CANCELLING');
GRANT EXECUTE ON FUNCTION alipayplus_request_cancel(text, text, timestamptz),
	alipayplus_process_cancellations(integer, interval, bigint) TO apc_pool_app;
SQL

# start_bouncer RESET_ALWAYS: PgBouncer in transaction pooling, one server
# connection in the pool; with RESET_ALWAYS=1 the reset settings the README
# asks for, with 0 PgBouncer's defaults (DISCARD ALL in session pooling only)
start_bouncer() {
	stop_bouncer
	mkdir -p "$DIR"
	printf '"apc_pool_app" ""\n"postgres" ""\n' >"$DIR/userlist.txt"
	{
		cat <<INI
[databases]
$DB = host=$RIG port=$PGPORT dbname=$DB
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 20
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
INI
		[ "$1" = 1 ] && printf 'server_reset_query = DISCARD ALL\nserver_reset_query_always = 1\n'
	} >"$DIR/pgbouncer.ini"
	chown -R postgres:postgres "$DIR"
	runuser -u postgres -- $PGBOUNCER -d "$DIR/pgbouncer.ini" 9>&- || { not_ok "pgbouncer did not start: $(tail -5 "$DIR/pgbouncer.log")"; finish; }
	for _ in $(seq 1 50); do
		$PGBIN/psql -X -qAt -h 127.0.0.1 -p $PORT -U apc_pool_app -d $DB -c "SELECT 1" >/dev/null 2>&1 && break
		sleep 0.1
	done
}

# pool USER SQL: one client's session through PgBouncer (a new client each time)
pool() { $PGBIN/psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PORT -U "$1" -d $DB -c "$2" 2>&1; }
# pool_state USER SQL: the SQLSTATE and hint of the error SQL fails with
pool_state() {
	$PGBIN/psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PORT -U "$1" -d $DB \
		-c "\set VERBOSITY verbose" -c "$2" 2>&1 | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p; s/^HINT:  //p' | paste -sd'|'
}

# a_leaves_scratch SETUP WHAT COUNT: client A leaves a temporary table on the
# one server connection (sets pid_a); client B lands on the same backend and
# finds COUNT such tables in its session
a_leaves_scratch() {
	local pid_b
	pid_a=$(pool apc_pool_app "CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1); SELECT pg_backend_pid()")
	pid_b=$(pool apc_pool_app "SELECT pg_backend_pid()")
	expect "$1: clients A and B share one backend" "$pid_a" "$pid_b"
	expect "$1: $2" "$3" \
		"$(pool apc_pool_app "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relnamespace = pg_my_temp_schema()")"
}

# 1a. PgBouncer's default set-up: client A leaves a temporary table on the
# one server connection, client B is refused clearly
start_bouncer 0
a_leaves_scratch "default set-up" "client B's session has A's temporary table" 1
refusal=$(pool_state apc_pool_app "SELECT state FROM alipayplus_request_cancel(payment_request_id => 'pool-1-$TAG')")
expect "default set-up: client B is refused with 55000" "55000" "${refusal%%|*}"
case "$refusal" in
*"server_reset_query = DISCARD ALL and server_reset_query_always = 1"*) ok "the refusal's hint names the reset settings" ;;
*) not_ok "the refusal's hint names the reset settings: got '$refusal'" ;;
esac
expect "default set-up: A's temporary table is still there, on the same backend" "$pid_a|1" \
	"$(pool apc_pool_app "SELECT pg_backend_pid() || '|' || count(*) FROM pg_temp.scratch")"
expect "default set-up: the order is untouched" "NEW|0" \
	"$(q $DB "SELECT status || '|' || (SELECT count(*) FROM alipayplus.cancellations) FROM shop.orders WHERE id = 1")"

# 2. session state with the default set-up: SET leaks to the next client,
# SET LOCAL does not
pool postgres "SET alipayplus.timeout_ms = 1234" >/dev/null
expect "a plain SET is seen by the next client of the server connection" "1234ms" \
	"$(pool postgres "SHOW alipayplus.timeout_ms")"
pool postgres "RESET alipayplus.timeout_ms" >/dev/null
pool postgres "BEGIN; SET LOCAL alipayplus.timeout_ms = 4321; COMMIT" >/dev/null
expect "SET LOCAL ends with its transaction" "5s" "$(pool postgres "SHOW alipayplus.timeout_ms")"
pool postgres "SET ROLE apc_pool_app" >/dev/null
expect "SET ROLE is the next client's role too" "apc_pool_app" "$(pool postgres "SELECT current_user")"
pool postgres "RESET ROLE" >/dev/null
pool postgres "BEGIN; SET LOCAL ROLE apc_pool_app; COMMIT" >/dev/null
expect "SET LOCAL ROLE ends with its transaction" "postgres" "$(pool postgres "SELECT current_user")"

# 1b. the README's set-up: DISCARD ALL after every transaction
start_bouncer 1
a_leaves_scratch "reset set-up" "A's temporary table did not outlive A's transaction" 0
expect "reset set-up: client B requests a cancellation after A" "CANCELLING" \
	"$(pool apc_pool_app "SELECT state FROM alipayplus_request_cancel(payment_request_id => 'pool-1-$TAG')")"
expect "reset set-up: client B runs the processor" "1|1" \
	"$(pool apc_pool_app "SELECT claimed || '|' || cancelled FROM alipayplus_process_cancellations()")"
expect "the order is cancelled" "CANCELLED" "$(q $DB "SELECT status FROM shop.orders WHERE id = 1")"
expect "the owner's trigger never saw A's temporary table" "CANCELLING|false,CANCELLED|false" \
	"$(q $DB "SELECT string_agg(status || '|' || saw_scratch, ',' ORDER BY status DESC) FROM shop.audit WHERE id = 1")"
pool postgres "SET alipayplus.timeout_ms = 1234" >/dev/null
expect "reset set-up: a plain SET does not reach the next client" "5s" "$(pool postgres "SHOW alipayplus.timeout_ms")"
pool postgres "SET ROLE apc_pool_app" >/dev/null
expect "reset set-up: SET ROLE does not reach the next client" "postgres" "$(pool postgres "SELECT current_user")"
finish
