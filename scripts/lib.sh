#!/usr/bin/env bash
# scripts/lib.sh: the test rig shared by scripts/demo.sh and scripts/test.sh.
#
# It installs what is missing (apt-get), builds and installs the extension,
# makes a fresh CA, TLS certificate and key pairs, starts the fake Alipay+
# gateway (test/fake_gateway.py) over HTTPS and a throwaway PostgreSQL 15
# cluster running as the unprivileged "postgres" user, configured for that
# gateway.  Everything lives in $RIG (default /tmp/alipayplus_rig), which is
# wiped at every start, so both commands can run again and again.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RIG=${ALIPAYPLUS_RIG:-/tmp/alipayplus_rig}
# ALIPAYPLUS_PGBIN: a copy of PostgreSQL 15's tree to build and run against
# instead of the system's (see rig_copy_postgres; then set ALIPAYPLUS_RIG and
# ALIPAYPLUS_PGPORT too, so that the two rigs do not meet)
PGBIN=${ALIPAYPLUS_PGBIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PGBIN/pg_config
PGPORT_RIG=${ALIPAYPLUS_PGPORT:-54329}
PY=/usr/bin/python3
CLIENT_ID=SANDBOX_5X00000000000000
PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-15-cron libcurl4-openssl-dev libssl-dev pkg-config make gcc openssl python3 python3-cryptography pgbouncer libipc-run-perl"

export PGHOST=$RIG PGPORT=$PGPORT_RIG PGUSER=postgres PGDATABASE=postgres

say() { printf '\n==> %s\n' "$*"; }

as_postgres() { runuser -u postgres -- "$@" 9>&-; }

rig_install_deps() {
	local missing=()
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		say "installing ${missing[*]}"
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
}

rig_build() {
	say "building and installing the extension"
	make -C "$REPO" -s PG_CONFIG=$PG_CONFIG
	make -C "$REPO" -s PG_CONFIG=$PG_CONFIG install
}

# Stop whatever an earlier run left behind.
rig_stop() {
	if [ -f "$RIG/pgdata/postmaster.pid" ]; then
		as_postgres $PGBIN/pg_ctl -D "$RIG/pgdata" -m immediate stop >/dev/null 2>&1 || true
	fi
	if [ -f "$RIG/gateway.pid" ]; then
		kill "$(cat "$RIG/gateway.pid")" 2>/dev/null || true
		sleep 0.2
	fi
}

# A CA per run, a server certificate for localhost, and the key pairs.
rig_keys() {
	say "making a CA, a TLS certificate and key pairs in $RIG"
	local k=$RIG/keys
	mkdir -p "$k"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=alipayplus test CA" \
		-keyout "$k/ca.key" -out "$k/ca.pem" 2>/dev/null
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=unrelated CA" \
		-keyout "$k/other_ca.key" -out "$k/other_ca.pem" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
		-keyout "$k/server.key" -out "$k/server.csr" 2>/dev/null
	printf 'subjectAltName=DNS:localhost\n' >"$k/server.ext"
	openssl x509 -req -in "$k/server.csr" -CA "$k/ca.pem" -CAkey "$k/ca.key" -CAcreateserial \
		-days 2 -extfile "$k/server.ext" -out "$k/server.crt" 2>/dev/null
	# for the fault matrix, two more server certificates from the same CA,
	# each wrong in one way only: one for another host name, and one for
	# localhost that expired long ago (openssl ca takes explicit dates)
	openssl req -newkey rsa:2048 -nodes -subj "/CN=other.example" \
		-keyout "$k/otherhost.key" -out "$k/otherhost.csr" 2>/dev/null
	printf 'subjectAltName=DNS:other.example\n' >"$k/otherhost.ext"
	openssl x509 -req -in "$k/otherhost.csr" -CA "$k/ca.pem" -CAkey "$k/ca.key" -CAcreateserial \
		-days 2 -extfile "$k/otherhost.ext" -out "$k/otherhost.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
		-keyout "$k/expired.key" -out "$k/expired.csr" 2>/dev/null
	mkdir -p "$k/ca_db"
	: >"$k/ca_db/index.txt"
	echo 1000 >"$k/ca_db/serial"
	cat >"$k/ca_db/ca.cnf" <<CNF
[ca]
default_ca = rig
[rig]
database = $k/ca_db/index.txt
new_certs_dir = $k/ca_db
serial = $k/ca_db/serial
default_md = sha256
policy = any
x509_extensions = ext
[any]
commonName = supplied
[ext]
subjectAltName = DNS:localhost
CNF
	openssl ca -batch -notext -config "$k/ca_db/ca.cnf" -cert "$k/ca.pem" -keyfile "$k/ca.key" \
		-startdate 20200101000000Z -enddate 20200102000000Z \
		-in "$k/expired.csr" -out "$k/expired.crt" 2>/dev/null
	# the acquirer's key pair: PKCS#8 PEM, and the same key as PKCS#1 PEM, DER and bare base64
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$k/client.pem" 2>/dev/null
	openssl pkey -in "$k/client.pem" -pubout -out "$k/client_pub.pem"
	openssl pkey -in "$k/client.pem" -traditional -out "$k/client_pkcs1.pem"
	openssl pkey -in "$k/client.pem" -outform DER -out "$k/client.der"
	openssl pkey -in "$k/client.pem" -outform DER | base64 -w0 >"$k/client.b64"
	# a second acquirer key, for the reload and file-change tests
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$k/client2.pem" 2>/dev/null
	# a 4096-bit acquirer key (a longer Signature header); the gateway knows it too
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$k/client4096.pem" 2>/dev/null
	openssl pkey -in "$k/client4096.pem" -pubout -out "$k/client4096_pub.pem"
	# Alipay+'s key pair, used by the gateway to sign its answers
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$k/gateway.pem" 2>/dev/null
	openssl pkey -in "$k/gateway.pem" -pubout -out "$k/gateway_pub.pem"
	openssl pkey -in "$k/gateway.pem" -pubout -outform DER | base64 -w0 >"$k/gateway_pub.b64"
	# test vector B's key pair, kept in the repository (test/vectors/README.md)
	cp "$REPO/test/vectors/vector_b_private.pem" "$k/vector_b.pem"
	cp "$REPO/test/vectors/vector_b_public.pem" "$k/vector_b_pub.pem"
	openssl pkey -in "$k/vector_b.pem" -noout 2>/dev/null || { echo "test/vectors/vector_b_private.pem is not a key" >&2; return 1; }
	# broken and badly protected files for the error tests
	printf 'this is not a key\n' >"$k/garbage.pem"
	cp "$k/client.pem" "$k/world_readable.pem"
	chown -R postgres:postgres "$k"
	chmod 0600 "$k"/*.pem "$k"/*.key "$k"/*.der "$k"/*.b64
	chmod 0644 "$k/ca.pem" "$k/other_ca.pem" "$k/client_pub.pem" "$k/client4096_pub.pem" "$k/gateway_pub.pem" "$k/vector_b_pub.pem" "$k/gateway_pub.b64"
	chmod 0644 "$k/world_readable.pem"
}

# rig_gateway [GATEWAY OPTIONS...]: start the gateway (extra options such as
# --chaos 0.2 go to test/fake_gateway.py).  Besides its main port
# ($RIG/gateway.port) it serves an expired certificate
# ($RIG/gateway.port.expired), a certificate for another host
# ($RIG/gateway.port.otherhost), and a port that never speaks TLS
# ($RIG/gateway.port.silent), for the fault matrix (sql/faults.sql).
rig_gateway() {
	say "starting the fake Alipay+ gateway"
	local k=$RIG/keys
	rm -f "$RIG/gateway.port"
	$PY "$REPO/test/fake_gateway.py" --host 127.0.0.1 --port 0 \
		--portfile "$RIG/gateway.port" --pidfile "$RIG/gateway.pid" \
		--cert "$k/server.crt" --key "$k/server.key" \
		--client-id "$CLIENT_ID" --client-pubkey "$k/client_pub.pem" \
		--client-pubkey "$k/client4096_pub.pem" \
		--sign-key "$k/gateway.pem" --log "$RIG/gateway.jsonl" \
		--alt-listener expired "$k/expired.crt" "$k/expired.key" \
		--alt-listener otherhost "$k/otherhost.crt" "$k/otherhost.key" \
		--silent-listener "$@" \
		>"$RIG/gateway.out" 2>&1 9>&- &
	for _ in $(seq 1 100); do
		[ -s "$RIG/gateway.port" ] && break
		sleep 0.1
	done
	[ -s "$RIG/gateway.port" ] || { cat "$RIG/gateway.out" >&2; return 1; }
	chmod 0644 "$RIG"/gateway.port*
	GATEWAY_PORT=$(cat "$RIG/gateway.port")
	echo "gateway listening on https://localhost:$GATEWAY_PORT"
}

# The alipayplus.* settings that point a cluster at the rig's gateway and keys.
rig_alipayplus_conf() {
	cat <<CONF
alipayplus.gateway_url = 'https://localhost:$(cat "$RIG/gateway.port")'
alipayplus.client_id = '$CLIENT_ID'
alipayplus.private_key_file = '$RIG/keys/client.pem'
alipayplus.public_key_file = '$RIG/keys/gateway_pub.pem'
alipayplus.ca_file = '$RIG/keys/ca.pem'
alipayplus.connect_timeout_ms = 2000
alipayplus.timeout_ms = 5000
alipayplus.retry_base_ms = 200
CONF
}

rig_cluster() {
	say "starting a PostgreSQL 15 cluster on port $PGPORT_RIG (user postgres)"
	as_postgres $PGBIN/initdb -D "$RIG/pgdata" --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
	cat >>"$RIG/pgdata/postgresql.conf" <<CONF
port = $PGPORT_RIG
listen_addresses = 'localhost'
unix_socket_directories = '$RIG'
shared_preload_libraries = 'pg_cron,alipayplus_cancel'
cron.database_name = 'postgres'
max_connections = 50
# PREPARE TRANSACTION after a cancellation (sql/twophase.sql)
max_prepared_transactions = 10
fsync = off
log_line_prefix = '%m [%p] %q%u@%d '
apc_rig.dir = '$RIG'
CONF
	rig_alipayplus_conf >>"$RIG/pgdata/postgresql.conf"
	as_postgres $PGBIN/pg_ctl -D "$RIG/pgdata" -l "$RIG/postgres.log" -w start >/dev/null
	as_postgres $PGBIN/psql -X -q -d postgres -c "CREATE EXTENSION pg_cron"
}

# One rig at a time on a machine: the rig installs the extension into the
# server's directories and lives in a fixed folder, so a second run (another
# checkout's, or scripts/package.sh) waits here until the first is done.
# The lock is held until the calling script exits.
rig_lock() {
	local lock=/tmp/alipayplus_rig.lock
	[ "$PGBIN" = /usr/lib/postgresql/15/bin ] || lock=$RIG.lock
	exec 9>"$lock"
	if ! flock -n 9; then
		echo "waiting for another run of the rig to finish (/tmp/alipayplus_rig.lock)" >&2
		flock 9
	fi
}

# The whole set-up: deps, build, keys, gateway, cluster.  Arguments go to
# the gateway (rig_gateway).
rig_up() {
	[ "$(id -u)" = 0 ] || { echo "run as root (it installs packages and switches to the postgres user)" >&2; exit 1; }
	rig_lock
	rig_install_deps
	rig_stop
	rm -rf "$RIG"
	mkdir -p "$RIG"
	chown postgres:postgres "$RIG"
	chmod 0755 "$RIG"
	rig_build
	rig_keys
	rig_gateway "$@"
	rig_cluster
}

# rig_copy_postgres DIR: a private copy of PostgreSQL 15's server tree under
# DIR (binaries, libraries, extension files, headers), for a rig that must not
# touch the system's installation: a sanitizer build (scripts/sanitize.sh) or
# a second rig beside a running one.  PostgreSQL finds its files relative to
# its binaries, so the copy is complete.  Use it as
# ALIPAYPLUS_PGBIN=DIR/usr/lib/postgresql/15/bin.
rig_copy_postgres() {
	local dir=$1
	rm -rf "$dir"
	mkdir -p "$dir/usr/lib/postgresql" "$dir/usr/share/postgresql" "$dir/usr/include/postgresql"
	cp -a /usr/lib/postgresql/15 "$dir/usr/lib/postgresql/"
	cp -a /usr/share/postgresql/15 "$dir/usr/share/postgresql/"
	cp -a /usr/include/postgresql/15 "$dir/usr/include/postgresql/"
	# the client-side headers pg_config --includedir names
	for f in /usr/include/postgresql/*.h; do
		[ -e "$f" ] && cp -a "$f" "$dir/usr/include/postgresql/"
	done
	[ -d /usr/include/postgresql/internal ] && cp -a /usr/include/postgresql/internal "$dir/usr/include/postgresql/"
	chmod -R a+rX "$dir"
}

psql_rig() { $PGBIN/psql -X -v ON_ERROR_STOP=1 "$@"; }

# ask SQL: the output of SQL in the one long-lived session (coproc PSQL),
# all of it on one line
ask() {
	echo "$1" >&"${PSQL[1]}"
	echo "\\echo __done__" >&"${PSQL[1]}"
	local line out=""
	while read -r line <&"${PSQL[0]}"; do
		[ "$line" = "__done__" ] && break
		out+="$line"
	done
	echo "$out"
}
