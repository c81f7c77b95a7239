#!/usr/bin/env bash
# test/pooler.sh: the extension behind PgBouncer in transaction pooling
# (Debian's pgbouncer, on loopback, one server connection for every client,
# so that clients take turns on one backend as they would under load).
#
# 1. Client A leaves a temporary table (and the composite type that comes
#    with it) on the shared server connection, as transaction pooling lets
#    any client do.  Client B, another application, then requests a
#    cancellation and runs the processor on that same backend: both go
#    through (before 1.3 the ledger refused with 55000, "cannot work on the
#    orders table from a session that has temporary tables or types", for
#    every later client of that connection), the owner's trigger does not
#    see A's table, and A's table is still there for A.
# 2. What the README's "Connection poolers" section says about session
#    state: a plain SET (of alipayplus.* as of any setting) and SET ROLE
#    leak to the next client of the server connection, SET LOCAL and SET
#    LOCAL ROLE do not.
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

cleanup() {
	if [ -f "$DIR/pgbouncer.pid" ]; then
		kill "$(cat "$DIR/pgbouncer.pid")" 2>/dev/null
		sleep 0.3
	fi
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

# PgBouncer in transaction pooling, one server connection in the pool
mkdir -p "$DIR"
printf '"apc_pool_app" ""\n"postgres" ""\n' >"$DIR/userlist.txt"
cat >"$DIR/pgbouncer.ini" <<INI
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
server_reset_query =
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
INI
chown -R postgres:postgres "$DIR"
runuser -u postgres -- $PGBOUNCER -d "$DIR/pgbouncer.ini" 9>&- || { not_ok "pgbouncer did not start: $(tail -5 "$DIR/pgbouncer.log")"; finish; }
for _ in $(seq 1 50); do
	$PGBIN/psql -X -qAt -h 127.0.0.1 -p $PORT -U apc_pool_app -d $DB -c "SELECT 1" >/dev/null 2>&1 && break
	sleep 0.1
done

# pool USER SQL: one client's session through PgBouncer (a new client each time)
pool() { $PGBIN/psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PORT -U "$1" -d $DB -c "$2" 2>&1; }

# 1. client A leaves a temporary table on the one server connection
pid_a=$(pool apc_pool_app "CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1); SELECT pg_backend_pid()")
pid_b=$(pool apc_pool_app "SELECT pg_backend_pid()")
expect "clients A and B share one backend" "$pid_a" "$pid_b"
expect "client B's session has A's temporary table" "1" \
	"$(pool apc_pool_app "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relnamespace = pg_my_temp_schema()")"

# client B requests a cancellation and runs the processor on that backend
expect "client B: request a cancellation beside A's temporary table" "CANCELLING" \
	"$(pool apc_pool_app "SELECT state FROM alipayplus_request_cancel(payment_request_id => 'pool-1-$TAG')")"
expect "client B: the processor beside A's temporary table" "1|1" \
	"$(pool apc_pool_app "SELECT claimed || '|' || cancelled FROM alipayplus_process_cancellations()")"
expect "the order is cancelled" "CANCELLED" "$(q $DB "SELECT status FROM shop.orders WHERE id = 1")"
expect "the owner's trigger never saw A's temporary table" "CANCELLING|false,CANCELLED|false" \
	"$(q $DB "SELECT string_agg(status || '|' || saw_scratch, ',' ORDER BY status DESC) FROM shop.audit WHERE id = 1")"
expect "A's temporary table is still there, on the same backend" "$pid_a|1" \
	"$(pool apc_pool_app "SELECT pg_backend_pid() || '|' || count(*) FROM pg_temp.scratch")"

# 2. session state: SET leaks to the next client, SET LOCAL does not
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
finish
