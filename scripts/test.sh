#!/usr/bin/env bash
# scripts/test.sh: set up the rig (see scripts/lib.sh) and run the whole
# test suite: the fake gateway's self-test, the pg_regress and isolation
# suites (make installcheck), the shell tests under test/*.sh that need
# to kill, cancel or restart things, and the TAP tests under test/tap/t/
# that need clusters of their own (scripts/tap.sh).  Exits non-zero on any failure.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rig_up

passed=0
failed=0
failures=()
run() {
	local name=$1
	shift
	say "test: $name"
	if "$@"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures+=("$name")
	fi
}

installcheck() {
	rm -rf "$REPO/results" "$REPO/output_iso" "$REPO/regression.diffs" "$REPO/regression.out"
	if ! make -C "$REPO" -s PG_CONFIG=$PG_CONFIG installcheck; then
		for f in "$REPO/regression.diffs" "$REPO/output_iso/regression.diffs"; do
			[ -f "$f" ] && head -n 300 "$f"
		done
		return 1
	fi
}

run "fake gateway self-test" $PY "$REPO/test/test_fake_gateway.py"
run "pg_regress and isolation suites" installcheck
for t in "$REPO"/test/*.sh; do
	[ -e "$t" ] || continue
	run "$(basename "$t")" bash "$t"
done
for t in "$REPO"/test/tap/t/*.pl; do
	[ -e "$t" ] || continue
	run "tap/$(basename "$t")" bash "$REPO/scripts/tap.sh" "$t"
done

rig_stop
echo
[ ${#failures[@]} -eq 0 ] || printf 'failed: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
