# test/shell_common.bash: helpers for the shell tests in test/*.sh.
# Sourced, not run.  The rig (scripts/lib.sh) must already be up: the
# cluster on $PGHOST/$PGPORT and the fake gateway.

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

checks_failed=0

# ok NAME: report a passed check.  not_ok NAME: report a failed one.
ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; checks_failed=$((checks_failed + 1)); }

# expect NAME EXPECTED ACTUAL
expect() {
	if [ "$2" == "$3" ]; then
		ok "$1"
	else
		not_ok "$1: expected '$2', got '$3'"
	fi
}

# q DB SQL: the single value a query returns (unaligned, no headers)
q() { $PGBIN/psql -X -qAt -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

# now_ms: the wall clock in milliseconds
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# wait_exit PID SECONDS: wait for a background job to end; false on timeout
wait_exit() {
	local deadline=$(($(now_ms) + $2 * 1000))
	while kill -0 "$1" 2>/dev/null; do
		[ "$(now_ms)" -lt $deadline ] || return 1
		sleep 0.05
	done
	return 0
}

# line_value FILE KEY: the text after "KEY=" on the first line starting so
line_value() { sed -n "s/^$2=//p" "$1" | head -n 1; }

# gateway_requests ID: how many requests for ID the fake gateway logged
gateway_requests() { grep -c "\"id\": \"$1\"" "$RIG/gateway.jsonl"; }

# init_cluster DATADIR PORT SOCKETDIR: a throwaway cluster (not started),
# unix socket only, configured for the rig's gateway and keys; extra
# postgresql.conf lines come on standard input.  False if initdb fails.
init_cluster() {
	as_postgres $PGBIN/initdb -D "$1" --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null || return 1
	{
		cat <<CONF
port = $2
listen_addresses = ''
unix_socket_directories = '$3'
max_connections = 20
log_line_prefix = '%m [%p] %q%u@%d '
CONF
		cat
		rig_alipayplus_conf
	} >>"$1/postgresql.conf"
}

# scratch_db DB: a fresh database DB with the extension.  At exit it is
# dropped, the background jobs listed in BG_PIDS are killed and the folder
# $TMP (if set) is removed.  False if it cannot be made.
BG_PIDS=()
scratch_db() {
	SCRATCH_DB=$1
	trap scratch_cleanup EXIT
	echo "# setting up database $1"
	q postgres "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1
	q postgres "CREATE DATABASE $1" >/dev/null && q "$1" "CREATE EXTENSION alipayplus_cancel" >/dev/null
}
scratch_cleanup() {
	local p
	for p in "${BG_PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	q postgres "DROP DATABASE IF EXISTS $SCRATCH_DB WITH (FORCE)" >/dev/null 2>&1
	[ -n "${TMP:-}" ] && rm -rf "$TMP"
}

# finish: exit status of the test script
finish() {
	if [ "$checks_failed" -eq 0 ]; then
		echo "all checks passed"
		exit 0
	fi
	echo "$checks_failed check(s) failed"
	exit 1
}
