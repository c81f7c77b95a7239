#!/usr/bin/env bash
# scripts/tap.sh [TEST.pl ...]: the TAP tests under test/tap/t/ (all of
# them, or those named), with prove and PostgreSQL's own TAP framework
# (PostgreSQL::Test::Cluster, from postgresql-server-dev-15; it needs
# libipc-run-perl).  They start clusters of their own, as the postgres user
# (PostgreSQL refuses to run as root), and use the rig's fake gateway and
# keys: run it after rig_up, as scripts/test.sh does.  Each test's clusters
# and logs go to $RIG/tap/NAME/tmp_check; a failing test's log is printed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -s "$RIG/gateway.port" ] || { echo "the rig is not up ($RIG/gateway.port): run scripts/test.sh, or rig_up first" >&2; exit 1; }

PGXS_DIR=$(dirname "$($PG_CONFIG --pgxs)")/../..
PERL_LIB=$(cd "$PGXS_DIR/src/test/perl" && pwd)
PG_REGRESS_BIN=$(cd "$PGXS_DIR/src/test/regress" && pwd)/pg_regress

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=("$REPO"/test/tap/t/*.pl)
[ -e "${tests[0]}" ] || { echo "no TAP tests in $REPO/test/tap/t" >&2; exit 1; }

mkdir -p "$RIG/tap"
chown postgres:postgres "$RIG/tap"
# the alipayplus.* settings for the test clusters: the rig's gateway and keys
rig_alipayplus_conf >"$RIG/tap/alipayplus.conf"
chmod 0644 "$RIG/tap/alipayplus.conf"

status=0
for t in "${tests[@]}"; do
	t=$(cd "$(dirname "$t")" && pwd)/$(basename "$t")
	name=$(basename "$t" .pl)
	dir=$RIG/tap/$name
	rm -rf "$dir"
	mkdir -p "$dir"
	chown postgres:postgres "$dir"
	if ! (cd "$dir" && as_postgres env PATH="$PGBIN:$PATH" \
		PERL5LIB="$PERL_LIB:$REPO/test/tap/lib" PG_REGRESS="$PG_REGRESS_BIN" \
		TESTDIR="$dir" ALIPAYPLUS_RIG="$RIG" ALIPAYPLUS_TAP_CONF="$RIG/tap/alipayplus.conf" \
		ALIPAYPLUS_REPO="$REPO" \
		prove --timer "$t"); then
		status=1
		for f in "$dir"/tmp_check/log/regress_log_*; do
			[ -f "$f" ] && { echo "---- tail of $f"; tail -n 80 "$f"; }
		done
	fi
done
exit $status
