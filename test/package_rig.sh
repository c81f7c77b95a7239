#!/usr/bin/env bash
# test/package_rig.sh: scripts/package.sh wipes its own folder
# (ALIPAYPLUS_PKG_RIG) at each run, so it refuses, before touching anything,
# a folder that is the demo's rig (scripts/demo.sh, scripts/test.sh), holds
# it, or lies inside it, also when named through a symbolic link or "..".
# A stand-in demo rig in a throwaway folder (ALIPAYPLUS_RIG) is used, so
# that nothing of the real rig is at stake even if the refusal failed.
#
# Run as root from the repository:  bash test/package_rig.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

T=$(mktemp -d /tmp/apc_pkg_rig.XXXXXX)
trap 'rm -rf "$T"' EXIT
DEMO=$T/demo/rig
mkdir -p "$DEMO/pgdata" "$T/other"
echo keep >"$DEMO/pgdata/marker"
ln -s "$DEMO" "$T/link"
ln -s "$T/demo" "$T/parent_link"
demo_state() { stat -c %i "$DEMO" "$DEMO/pgdata"; cat "$DEMO/pgdata/marker"; ls -A "$T/demo" "$DEMO"; }
before=$(demo_state)

# refused PKG_RIG WHAT: package.sh exits non-zero at once, naming the folder,
# and the stand-in demo rig is as it was
refused() {
	local out rc
	out=$(ALIPAYPLUS_RIG=$DEMO ALIPAYPLUS_PKG_RIG=$1 timeout 60 bash "$REPO/scripts/package.sh" 2>&1 </dev/null)
	rc=$?
	case "$rc:$out" in
	124:*) not_ok "package.sh refuses ALIPAYPLUS_PKG_RIG $2 ($1): it went on (stopped after 60 s)" ;;
	0:*) not_ok "package.sh refuses ALIPAYPLUS_PKG_RIG $2 ($1): exit 0" ;;
	*"not ok - ALIPAYPLUS_PKG_RIG ($1) must not be"*"demo's rig ($DEMO)"*) ok "package.sh refuses ALIPAYPLUS_PKG_RIG $2" ;;
	*) not_ok "package.sh refuses ALIPAYPLUS_PKG_RIG $2 ($1): exit $rc, $(tail -3 <<<"$out")" ;;
	esac
	expect "the demo's rig is untouched after ALIPAYPLUS_PKG_RIG $2" "$before" "$(demo_state)"
}

refused "$DEMO" "equal to the demo's rig"
refused "$DEMO/" "equal to the demo's rig, with a trailing slash"
refused "$T/link" "a symbolic link to the demo's rig"
refused "$T/demo" "holding the demo's rig"
refused "$T/parent_link" "a symbolic link to a folder holding the demo's rig"
refused "$DEMO/pkg" "inside the demo's rig"
refused "$T/link/pkg" "inside the demo's rig through a symbolic link"
refused "$T/other/../demo/rig/x/y" "inside the demo's rig through .."
finish
