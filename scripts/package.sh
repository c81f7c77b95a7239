#!/usr/bin/env bash
# scripts/package.sh: build the Debian package postgresql-15-alipayplus-cancel
# from debian/ (pg_buildext, the way Debian's own PostgreSQL extensions are
# built) into dist/, check what is in it, install it, and prove that the
# installed files work: CREATE EXTENSION and one signed cancelPayment call
# against the rig's fake Alipay+ gateway (scripts/lib.sh), in a throwaway
# cluster of its own.  Its keys, gateway and cluster live in a folder of
# their own ($ALIPAYPLUS_PKG_RIG, default /tmp/alipayplus_pkg), never in the
# rig of scripts/demo.sh and scripts/test.sh, so a demo left running goes on
# running (checked at the end).
#
# Runs as root on Debian 12 from a clean clone; installs what is missing with
# apt-get.  The build happens in a temporary copy of the working tree (its
# tracked and untracked, not ignored files), so the tree stays clean.  The
# package stays installed afterwards.  Exits non-zero on any failure.
#
#   ALIPAYPLUS_PKG_PGPORT   port of the check cluster (default 54341)
#   ALIPAYPLUS_PKG_RIG      folder of the check's keys, gateway and cluster
#                           (default /tmp/alipayplus_pkg; wiped at each run;
#                           refused if it is, holds or lies in the demo's rig)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START=$SECONDS
PKG_PGPORT=${ALIPAYPLUS_PKG_PGPORT:-54341}
DIST=$REPO/dist
PGMAJOR=15
PKGNAME=postgresql-$PGMAJOR-alipayplus-cancel
EXT=alipayplus_cancel
# What building the package needs on top of the rig's packages (postgresql-15,
# server headers, libcurl/OpenSSL headers, pkg-config, python3-cryptography for
# the gateway).  fakeroot is not needed: debian/control says
# Rules-Requires-Root: no.
PACKAGES="$PACKAGES build-essential dpkg-dev debhelper postgresql-server-dev-all"

passed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
fail() { echo "not ok - $*" >&2; exit 1; }

# The rig of scripts/demo.sh and scripts/test.sh is not this script's: a
# demo may be running there.  What it looks like now (the folder, its
# cluster's data directory, its postmaster and gateway: each process by pid
# and start time, so that a pid used again later does not count), to be
# compared at the end.
DEMO_RIG=$RIG
demo_rig_state() {
	local f pid start
	[ -d "$DEMO_RIG" ] || { echo "$DEMO_RIG absent"; return; }
	echo "$DEMO_RIG inode $(stat -c %i "$DEMO_RIG")"
	[ -d "$DEMO_RIG/pgdata" ] && echo "pgdata inode $(stat -c %i "$DEMO_RIG/pgdata")"
	for f in pgdata/postmaster.pid gateway.pid; do
		[ -f "$DEMO_RIG/$f" ] || continue
		pid=$(head -n 1 "$DEMO_RIG/$f")
		start=$(awk '{ print $22 }' "/proc/$pid/stat" 2>/dev/null || true)
		if [ -n "${DEMO_RIG_BEFORE+set}" ] && grep -qxF "$f: $pid, no process" <<<"$DEMO_RIG_BEFORE"; then
			start=		# not running before: a process with that pid now is another's
		fi
		if [ -n "$start" ]; then
			echo "$f: $pid, process started at $start"
		else
			echo "$f: $pid, no process"
		fi
	done
}
DEMO_RIG_BEFORE=$(demo_rig_state)
# this script's own folder: the rig's functions (scripts/lib.sh) work in $RIG
RIG=${ALIPAYPLUS_PKG_RIG:-/tmp/alipayplus_pkg}
# it is wiped at each run: never the demo's rig, nor a folder inside it or
# holding it (compared after resolving symbolic links and "..")
pkg_rig_real=$(realpath -m "$RIG")
demo_rig_real=$(realpath -m "$DEMO_RIG")
if [[ "$demo_rig_real/" == "${pkg_rig_real%/}/"* ]]; then
	fail "ALIPAYPLUS_PKG_RIG ($RIG) must not be or contain the demo's rig ($DEMO_RIG): it is wiped at each run; use a folder of its own, e.g. /tmp/alipayplus_pkg"
fi
if [[ "$pkg_rig_real/" == "${demo_rig_real%/}/"* ]]; then
	fail "ALIPAYPLUS_PKG_RIG ($RIG) must not be inside the demo's rig ($DEMO_RIG): it is wiped at each run; use a folder of its own, e.g. /tmp/alipayplus_pkg"
fi
export PGHOST=$RIG
PKGDATA=$RIG/pkgdata

[ "$(id -u)" = 0 ] || fail "run as root (it installs packages and switches to the postgres user)"

BUILD=
STARTED_GATEWAY=
STARTED_CLUSTER=
# On any exit: stop what this run started (only that), remove the build copy.
cleanup() {
	local rc=$?
	if [ -n "$STARTED_CLUSTER" ] && [ -f "$PKGDATA/postmaster.pid" ]; then
		as_postgres "$PGBIN"/pg_ctl -D "$PKGDATA" -m fast stop >/dev/null 2>&1 || true
	fi
	if [ -n "$STARTED_GATEWAY" ] && [ -f "$RIG/gateway.pid" ]; then
		kill "$(cat "$RIG/gateway.pid")" 2>/dev/null || true
		rm -f "$RIG/gateway.pid"
	fi
	if [ -n "$BUILD" ]; then
		rm -rf "$BUILD"
	fi
	if [ $rc -ne 0 ]; then
		echo "package.sh: FAILED (exit $rc); logs: $RIG/pkg_postgres.log, $RIG/gateway.out" >&2
		echo "package: $passed passed, 1 failed"
	fi
}
trap cleanup EXIT

rig_lock
rig_install_deps

# ---------------------------------------------------------------- build
VERSION=$(dpkg-parsechangelog -l "$REPO/debian/changelog" -S Version)
ARCH=$(dpkg --print-architecture)
DEB=${PKGNAME}_${VERSION}_${ARCH}.deb

say "building $DEB (dpkg-buildpackage -b, pg_buildext) in a temporary copy"
BUILD=$(mktemp -d /tmp/alipayplus_pkg.XXXXXX)
SRC=$BUILD/alipayplus-cancel-${VERSION%-*}
mkdir "$SRC"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# tracked and untracked files, not the ignored ones (build outputs, dist/, .rig/)
	(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
		xargs -0 -r sh -c 'for f; do if [ -e "$f" ] || [ -L "$f" ]; then printf "%s\0" "$f"; fi; done' sh |
		tar --null -T - -cf -) | tar -xf - -C "$SRC"
else
	tar -C "$REPO" --exclude=./dist --exclude=./.git --exclude=./.fuzz -cf - . | tar -xf - -C "$SRC"
fi
# no -dbgsym package: dist/ gets the one package to install
if ! (cd "$SRC" && DEB_BUILD_OPTIONS="noddebs ${DEB_BUILD_OPTIONS:-}" \
	dpkg-buildpackage -b -uc -us) >"$BUILD/build.log" 2>&1 9>&-; then
	tail -n 60 "$BUILD/build.log" >&2
	fail "dpkg-buildpackage failed (whole log above, last 60 lines)"
fi
[ -f "$BUILD/$DEB" ] || { ls -l "$BUILD" >&2; fail "the build made no $DEB"; }
mkdir -p "$DIST"
rm -f "$DIST/${PKGNAME}"_*.deb
cp "$BUILD/$DEB" "$DIST/"
cp "$BUILD/build.log" "$DIST/${PKGNAME}_${VERSION}_${ARCH}.build.log"
echo "built dist/$DEB ($(stat -c %s "$DIST/$DEB") bytes); build log: dist/${PKGNAME}_${VERSION}_${ARCH}.build.log"

# ---------------------------------------------------------------- contents
say "contents of dist/$DEB"
dpkg-deb -f "$DIST/$DEB" Package Version Architecture Depends
dpkg-deb -c "$DIST/$DEB" | awk '{ print $1, $3, $6 }'
mapfile -t FILES < <(dpkg-deb -c "$DIST/$DEB" | awk '{ print $6 }' | sed 's|^\./|/|')
default_version=$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$REPO/$EXT.control")
[ -n "$default_version" ] || fail "no default_version in $EXT.control"
required=(
	"/usr/lib/postgresql/$PGMAJOR/lib/$EXT.so"
	"/usr/share/postgresql/$PGMAJOR/extension/$EXT.control"
)
for f in "$REPO"/extension/"$EXT"--*.sql; do # every install and update script
	required+=("/usr/share/postgresql/$PGMAJOR/extension/$(basename "$f")")
done
# the default version is installable: its own script, or a chain of updates
# from an install script (PostgreSQL follows the chain)
if ! printf '%s\n' "${FILES[@]}" | grep -qE "/$EXT--([0-9.]+--)?$default_version\.sql$"; then
	fail "no install or update script reaches version $default_version"
fi
missing=0
for f in "${required[@]}"; do
	if printf '%s\n' "${FILES[@]}" | grep -qxF "$f"; then
		ok "package has $f"
	else
		echo "not ok - package lacks $f"
		missing=$((missing + 1))
	fi
done
[ $missing -eq 0 ] || fail "$missing required file(s) missing from $DEB"
dpkg-deb -f "$DIST/$DEB" Depends | grep -qE "(^|, )postgresql-$PGMAJOR( |,|$)" ||
	fail "$DEB does not depend on postgresql-$PGMAJOR"
ok "package depends on postgresql-$PGMAJOR"

# ---------------------------------------------------------------- install
say "installing dist/$DEB with apt-get"
# --reinstall: lay the package's files down again even if this version is
# installed already and a "make install" has overwritten them since.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --reinstall \
	"$DIST/$DEB" 9>&-
installed=$(dpkg-query -W -f='${Status} ${Version}' "$PKGNAME")
[ "$installed" = "install ok installed $VERSION" ] || fail "$PKGNAME: dpkg says '$installed'"
# the files on disk are the package's (no later make install, no stray edit)
changed=$(dpkg -V "$PKGNAME" || true)
[ -z "$changed" ] || { echo "$changed" >&2; fail "installed files differ from the package's"; }
ok "$PKGNAME $VERSION installed, dpkg -V clean"

# ---------------------------------------------------------------- check
# The rig's pieces, as rig_up does them, but in this script's own folder, no
# rig_build (it would make install over the package's files) and a cluster
# of our own.  Only what an earlier run of this script left is stopped.
if [ -f "$PKGDATA/postmaster.pid" ]; then
	as_postgres "$PGBIN"/pg_ctl -D "$PKGDATA" -m immediate stop >/dev/null 2>&1 || true
fi
rig_stop
rm -rf "$RIG"
mkdir -p "$RIG"
chown postgres:postgres "$RIG"
chmod 0755 "$RIG"
rig_keys
STARTED_GATEWAY=1
rig_gateway

say "starting a PostgreSQL $PGMAJOR cluster on port $PKG_PGPORT (socket in $RIG), no preloaded libraries"
as_postgres "$PGBIN"/initdb -D "$PKGDATA" --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$PKGDATA/postgresql.conf" <<CONF
port = $PKG_PGPORT
listen_addresses = ''
unix_socket_directories = '$RIG'
fsync = off
log_line_prefix = '%m [%p] %q%u@%d '
CONF
rig_alipayplus_conf >>"$PKGDATA/postgresql.conf"
STARTED_CLUSTER=1
as_postgres "$PGBIN"/pg_ctl -D "$PKGDATA" -l "$RIG/pkg_postgres.log" -w start >/dev/null

pq() { "$PGBIN"/psql -X -qAt -v ON_ERROR_STOP=1 -h "$RIG" -p "$PKG_PGPORT" -U postgres -d "$1" -c "$2"; }

say "CREATE EXTENSION $EXT and one signed call through the fake gateway"
pq postgres "CREATE DATABASE pkgcheck"
pq pkgcheck "CREATE EXTENSION $EXT"
ext=$(pq pkgcheck "SELECT extversion FROM pg_extension WHERE extname = '$EXT'")
[ "$ext" = "$default_version" ] || fail "extension version '$ext', expected '$default_version'"
# the server's library directory holds the package's library (and dpkg -V
# said above that it is unchanged)
libpath=$(pq pkgcheck "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'")/$EXT.so
owner=$(dpkg -S "$libpath" 2>/dev/null | cut -d: -f1)
[ "$owner" = "$PKGNAME" ] || fail "$libpath belongs to '${owner:-no package}', not $PKGNAME"
ok "CREATE EXTENSION $EXT (version $ext, library $libpath from $PKGNAME)"

id="PKG-$(date +%Y%m%d%H%M%S)-$$"
row=$(pq pkgcheck "SELECT result_status, result_code, state
	FROM alipayplus_cancel_payment(payment_request_id => '$id')")
echo "alipayplus_cancel_payment('$id') -> $row"
IFS='|' read -r status code state <<<"$row"
if [ "$status" != S ] || [ "$state" != CANCELLED ]; then
	fail "expected result_status S and state CANCELLED, got '$row'"
fi
verified=$(pq pkgcheck "SELECT bool_and(signature_verified) FROM alipayplus.cancel_attempts WHERE sent_id = '$id'")
[ "$verified" = t ] || fail "the answer's signature was not recorded as verified ('$verified')"
# the gateway checked our request signature
grep -F "\"id\": \"$id\"" "$RIG/gateway.jsonl" | grep -qF '"signature_valid": true' ||
	fail "the gateway did not log a validly signed request for $id"
ok "signed cancelPayment: $status $code, state $state, both signatures verified"

say "the demo's rig in $DEMO_RIG is as it was"
demo_after=$(demo_rig_state)
if [ "$demo_after" != "$DEMO_RIG_BEFORE" ]; then
	printf 'before:\n%s\nafter:\n%s\n' "$DEMO_RIG_BEFORE" "$demo_after" >&2
	fail "package.sh changed the rig in $DEMO_RIG, which a demo or test run may be using"
fi
echo "$DEMO_RIG_BEFORE"
ok "the rig in $DEMO_RIG untouched"

say "stopping the cluster and the gateway"
as_postgres "$PGBIN"/pg_ctl -D "$PKGDATA" -m fast stop >/dev/null
STARTED_CLUSTER=
kill "$(cat "$RIG/gateway.pid")"
rm -f "$RIG/gateway.pid"
STARTED_GATEWAY=

cat <<EOF

==> package.sh: all checks passed ($((SECONDS - START)) s)
  package      dist/$DEB ($(stat -c %s "$DIST/$DEB") bytes, ${#FILES[@]} entries)
  depends      $(dpkg-deb -f "$DIST/$DEB" Depends)
  contents     $EXT.so, $EXT.control, $(cd "$REPO/extension" && echo "$EXT"--*.sql) present
  installed    $PKGNAME $VERSION (apt-get), dpkg -V clean
  check        PostgreSQL $PGMAJOR cluster on port $PKG_PGPORT: CREATE EXTENSION $EXT $ext,
               alipayplus_cancel_payment('$id') = $status $code, $state
  left behind  the package stays installed (apt-get remove $PKGNAME to remove it)

package: $passed passed, 0 failed
EOF
