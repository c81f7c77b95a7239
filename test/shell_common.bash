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

# finish: exit status of the test script
finish() {
	if [ "$checks_failed" -eq 0 ]; then
		echo "all checks passed"
		exit 0
	fi
	echo "$checks_failed check(s) failed"
	exit 1
}
