#!/usr/bin/env bash
# scripts/sanitize.sh: the test suites under AddressSanitizer, UndefinedBehavior-
# Sanitizer and valgrind memcheck.  Exits non-zero on any sanitizer report, any
# suite failure or any crash in the server log.
#
#   bash scripts/sanitize.sh                    both passes
#   bash scripts/sanitize.sh --asan-only        ASan/UBSan pass only
#   bash scripts/sanitize.sh --valgrind-only    valgrind pass only
#
# Run as root on Debian 12, like scripts/test.sh; it installs what it lacks
# (PACKAGES below) with apt-get.
#
# Where things run.  The extension is never installed into the system's
# PostgreSQL: a private copy of the server tree (rig_copy_postgres in
# scripts/lib.sh) goes to $ALIPAYPLUS_SANITIZE_PREFIX (default
# /tmp/alipayplus_sanitize_pg) and the rig (scripts/lib.sh: keys, fake
# gateway, pg_cron, cluster) runs that copy.  The rig folder and port are the
# ones scripts/test.sh uses (ALIPAYPLUS_RIG, ALIPAYPLUS_PGPORT, default
# /tmp/alipayplus_rig), because some suites name /tmp/alipayplus_rig's files;
# the rig's lock makes this script and scripts/test.sh wait for each other.
# The extension is built from a copy of the working tree under .sanitize/
# (build-plain, build-asan), so that objects of an in-tree build are never
# linked into the sanitized library and the tree is left as it was; the
# pg_regress and isolation outputs and all reports are kept under
# .sanitize/logs/ after the run.
#
# Pass 1, ASan + UBSan: the extension is compiled with gcc and
#   -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
#   -fno-sanitize-recover=all
# (every UBSan finding is fatal, like an ASan one).  PostgreSQL's binaries are
# not instrumented, so the ASan runtime is LD_PRELOADed into the postmaster
# only (started without pg_ctl, so that no client program carries it); every
# backend and worker inherits it, PostgreSQL forking without exec.  Every
# ASan or LSan report of any process goes to $RIG/sanitizer/asan.<pid>; UBSan,
# which runs inside the ASan runtime, writes to stderr, the server log,
# where the script looks for it too.  ASAN_OPTIONS: abort_on_error=1, so that
# a memory error kills its backend with SIGABRT, which the postmaster sees as
# a crash; exitcode=0, so that a leak report alone does not change a
# process's exit status (a startup process exiting with 1 stops the server);
# detect_stack_use_after_return=1.  test/sanitize_preload.c is preloaded
# after the runtime: without it the postmaster hangs at start (see the file).
# LeakSanitizer is on: it runs when each backend exits and reports memory
# that nothing points to any more, such as a libcurl handle or an OpenSSL
# object the extension lost; memory PostgreSQL keeps through its memory
# contexts or the extension keeps in static variables is still reachable
# and not reported.  test/lsan.supp holds the suppressions for reports that
# come from PostgreSQL's own code or from programs the server runs, never
# ones with the extension's frames (see the file).  JIT is off (LLVM is not
# what is tested, and its code generation is not worth the time).  Then
# the whole pg_regress schedule (test/schedule) and the isolation schedule
# run, as in scripts/test.sh.
#
# UBSan cannot see signed integer overflow here: PostgreSQL's build flags,
# which PGXS passes on, include -fwrapv, which defines it.
#
# What ASan can and cannot see: it checks every access the extension's code
# makes to the stack, to globals and to malloc()ed memory (libcurl's and
# OpenSSL's buffers, which the extension handles in its callbacks, and
# palloc() blocks larger than 8 kB, which get their own malloc()).  Small
# palloc() chunks share one malloc()ed block, so an overrun from one chunk
# into the next is not seen: the PostgreSQL build has no memory poisoning.
#
# Pass 2, valgrind memcheck: a normal build of the extension; the postmaster
# runs under valgrind --tool=memcheck --trace-children=yes
# --track-origins=no --leak-check=no, one log per process
# ($RIG/valgrind/<pid>.log), with the suppressions in test/valgrind.supp
# (PostgreSQL's own code only, see the file), over the suites setup,
# signing, config, input, outcomes and callpath: the first six of
# test/schedule, which build on each other (key files, signing, every
# outcome, the call path, TLS).  Leak
# checking is left to LeakSanitizer: PostgreSQL frees memory by dropping
# whole contexts at exit time or never, which memcheck's leak report cannot
# tell from a leak.  Valgrind makes the server 20-50 times slower, so
# autovacuum is off in this pass, and the timeouts are those of the rig.
#
# A pass fails when a sanitizer report exists (a file, or a line in the server
# log), a valgrind log
# shows an unsuppressed error or lacks its final summary, a suite shows a
# difference, or the server log shows a process that died by a signal or
# with an unexpected exit code.  Both passes take about 2.5 minutes on 2 cores
# (ASan about 1, valgrind about 1.5).

set -euo pipefail

mode=all
case "${1:-}" in
'') ;;
--asan-only) mode=asan ;;
--valgrind-only) mode=valgrind ;;
*)
	echo "usage: $0 [--asan-only | --valgrind-only]" >&2
	exit 2
	;;
esac

SANITIZE_PREFIX=${ALIPAYPLUS_SANITIZE_PREFIX:-/tmp/alipayplus_sanitize_pg}
case "$SANITIZE_PREFIX" in
/?*) ;;
*)
	echo "ALIPAYPLUS_SANITIZE_PREFIX must be an absolute path other than /" >&2
	exit 2
	;;
esac
export ALIPAYPLUS_PGBIN=$SANITIZE_PREFIX/usr/lib/postgresql/15/bin
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PACKAGES="$PACKAGES valgrind libasan8 libubsan1"

WORK=$REPO/.sanitize
LOGS=$WORK/logs
SAN_COPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
VALGRIND_SUITES="setup signing config input outcomes callpath"
started=$SECONDS

[ "$(id -u)" = 0 ] || { echo "run as root (it installs packages and switches to the postgres user)" >&2; exit 1; }

# The lock is taken once, here, for the whole script: the private server copy
# is remade below, and rig_up (which would take the lock again) runs twice.
rig_lock
rig_lock() { :; }
rig_install_deps
say "making a private copy of PostgreSQL in $SANITIZE_PREFIX"
rig_copy_postgres "$SANITIZE_PREFIX"
# the copy must hold this tree's build only, not one scripts/test.sh installed
rm -f "$SANITIZE_PREFIX"/usr/lib/postgresql/15/lib/alipayplus_cancel.so \
	"$SANITIZE_PREFIX"/usr/share/postgresql/15/extension/alipayplus_cancel[.-]*
rm -rf "$SANITIZE_PREFIX"/usr/lib/postgresql/15/lib/bitcode/alipayplus_cancel*
rm -rf "$WORK"
mkdir -p "$LOGS"

# build_variant NAME [COPT]: copy the working tree to $WORK/NAME, build the
# extension there with COPT and install it into the private copy.
build_variant() {
	local dir=$WORK/$1
	rm -rf "$dir"
	mkdir -p "$dir"
	tar -C "$REPO" --exclude=./.git --exclude=./.sanitize --exclude='*.o' --exclude='*.so' \
		--exclude='*.bc' --exclude=./results --exclude=./output_iso --exclude=./dist \
		--exclude='./build-*' -cf - . | tar -C "$dir" -xf -
	make -C "$dir" -s PG_CONFIG="$PG_CONFIG" with_llvm=no COPT="${2:-}" || return 1
	make -C "$dir" -s PG_CONFIG="$PG_CONFIG" with_llvm=no install || return 1
}

# rig_up's build step: the normal build (its cluster starts without any
# sanitizer runtime; each pass then installs what it tests).
rig_build() {
	say "building the extension (normal build) and installing it into $SANITIZE_PREFIX"
	build_variant build-plain || { echo "the build failed" >&2; exit 1; }
}

# server_start CMD...: start the rig's postmaster as CMD... postgres (the
# data directory given as PGDATA: "-D" would be a strdup() PostgreSQL never
# frees, a leak report in every process),
# its output appended to the log pg_ctl would write, and wait until it
# accepts connections (up to 300 s: valgrind starts slowly).
server_start() {
	# the subshell lets go of the rig's lock (fd 9) before it waits on the server
	(
		exec 9>&-
		exec runuser -u postgres -- env PGDATA="$RIG/pgdata" "$@" "$PGBIN/postgres" >>"$RIG/postgres.log" 2>&1
	) &
	server_pid=$!
	local pid=$server_pid i
	for i in $(seq 1 600); do
		if $PGBIN/pg_isready -q -h "$RIG" -p "$PGPORT_RIG" -t 1; then
			return 0
		fi
		kill -0 $pid 2>/dev/null || break
		sleep 0.5
	done
	echo "the server did not start; its log:" >&2
	tail -n 50 "$RIG/postgres.log" >&2
	return 1
}

# server_stop: a fast shutdown; for a server server_start started, wait until
# its process is gone too (valgrind writes its last words after PostgreSQL
# has removed postmaster.pid, which is all pg_ctl waits for)
server_pid=
server_stop() {
	as_postgres $PGBIN/pg_ctl -D "$RIG/pgdata" -m fast -t 600 -w stop >/dev/null || return 1
	if [ -n "$server_pid" ]; then
		wait "$server_pid" || true
		server_pid=
	fi
	return 0
}

# run_suites DIR MAKE-ARGS...: make installcheck in DIR; diffs are printed
run_suites() {
	local dir=$1
	shift
	if make -C "$dir" -s PG_CONFIG="$PG_CONFIG" installcheck "$@"; then
		return 0
	fi
	local f
	for f in "$dir/regression.diffs" "$dir/output_iso/regression.diffs"; do
		[ -f "$f" ] && head -n 200 "$f"
	done
	return 1
}

# server_log_clean: no process of the cluster died by a signal or exited
# with an exit code other than 0 or 1 (1 is a FATAL error ending a session,
# as after pg_terminate_backend)
server_log_clean() {
	local bad
	bad=$(grep -E 'terminated by signal|was terminated by|exited with exit code ([2-9]|[1-9][0-9])|terminating any other active server processes|all server processes terminated' \
		"$RIG/postgres.log" || true)
	[ -z "$bad" ] && return 0
	echo "the server log shows crashes:"
	echo "$bad" | head -n 20
	return 1
}

# keep_logs NAME: copy the pass's logs and outputs to $LOGS/NAME
keep_logs() {
	local out=$LOGS/$1 dir=$2
	mkdir -p "$out"
	cp -a "$RIG/postgres.log" "$out/" 2>/dev/null || true
	[ -d "$RIG/sanitizer" ] && cp -a "$RIG/sanitizer" "$out/"
	[ -d "$RIG/valgrind" ] && cp -a "$RIG/valgrind" "$out/"
	local f
	for f in regression.diffs regression.out results output_iso; do
		if [ -e "$dir/$f" ]; then cp -a "$dir/$f" "$out/"; fi
	done
	return 0
}

summary=()
failed=0

asan_pass() {
	say "ASan/UBSan pass: setting up the rig"
	rig_up
	server_stop || return 1
	say "building the extension with $SAN_COPT"
	build_variant build-asan "$SAN_COPT" || { echo "the sanitizer build failed" >&2; return 1; }
	local asan
	asan=$(readlink -f "$(gcc -print-file-name=libasan.so)")
	[ -f "$asan" ] || { echo "no ASan runtime ($asan)" >&2; return 1; }
	mkdir -p "$WORK/preload"
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
		-o "$WORK/preload/sanitize_preload.so" "$REPO/test/sanitize_preload.c" || return 1
	mkdir -p "$RIG/sanitizer" && chown postgres:postgres "$RIG/sanitizer" || return 1
	cat >>"$RIG/pgdata/postgresql.conf" <<-CONF
		# scripts/sanitize.sh, ASan/UBSan pass
		jit = off
	CONF
	say "starting the cluster with the ASan runtime preloaded"
	server_start env LD_PRELOAD="$asan $WORK/preload/sanitize_preload.so" \
		ASAN_OPTIONS="log_path=$RIG/sanitizer/asan:detect_leaks=1:detect_stack_use_after_return=1:abort_on_error=1:exitcode=0" \
		LSAN_OPTIONS="suppressions=$REPO/test/lsan.supp:print_suppressions=0" \
		UBSAN_OPTIONS="log_path=$RIG/sanitizer/ubsan:print_stacktrace=1:halt_on_error=1:abort_on_error=1" ||
		return 1
	local ok=1 suites=passed
	# the two schedules one after the other, so that a failure in the first
	# does not keep the second from running
	say "ASan/UBSan pass: pg_regress suites (test/schedule)"
	run_suites "$WORK/build-asan" ISOLATION= || { ok=0; suites=FAILED; }
	say "ASan/UBSan pass: isolation suites (test/isolation_schedule)"
	run_suites "$WORK/build-asan" REGRESS= || { ok=0; suites=FAILED; }
	server_stop || ok=0
	server_log_clean || ok=0
	local reports
	reports=$(find "$RIG/sanitizer" -type f -size +0 | sort)
	local n=0
	if [ -n "$reports" ]; then
		n=$(echo "$reports" | wc -l)
		ok=0
		local f
		for f in $reports; do
			echo "---- $f"
			head -n 60 "$f"
		done
	fi
	# UBSan running inside the ASan runtime writes its reports to the
	# server's stderr, the server log, whatever log_path says
	local inlog
	inlog=$(grep -E 'runtime error: |ERROR: (Address|Leak|UndefinedBehavior)Sanitizer' "$RIG/postgres.log" || true)
	if [ -n "$inlog" ]; then
		n=$((n + $(echo "$inlog" | wc -l)))
		ok=0
		echo "---- sanitizer reports in $RIG/postgres.log"
		echo "$inlog" | head -n 20
	fi
	keep_logs asan "$WORK/build-asan"
	summary+=("ASan/UBSan/LSan: suites $suites, reports found: $n (logs: $LOGS/asan)")
	[ $ok = 1 ]
}

valgrind_pass() {
	say "valgrind pass: setting up the rig"
	rig_up
	server_stop || return 1
	mkdir -p "$RIG/valgrind" && chown postgres:postgres "$RIG/valgrind" || return 1
	cat >>"$RIG/pgdata/postgresql.conf" <<-CONF
		# scripts/sanitize.sh, valgrind pass
		jit = off
		autovacuum = off
	CONF
	say "starting the cluster under valgrind memcheck"
	server_start valgrind --tool=memcheck --trace-children=yes --track-origins=no \
		--leak-check=no --error-exitcode=99 --vgdb=no --num-callers=40 \
		--gen-suppressions=all --suppressions="$REPO/test/valgrind.supp" \
		--log-file="$RIG/valgrind/%p.log" || return 1
	local ok=1 suites=passed
	say "valgrind pass: suites $VALGRIND_SUITES"
	run_suites "$WORK/build-plain" REGRESS="$VALGRIND_SUITES" ISOLATION= || { ok=0; suites=FAILED; }
	server_stop || ok=0
	server_log_clean || ok=0
	# an error is a line "ERROR SUMMARY: <n> errors" with n > 0; a log without
	# that line belongs to a process that valgrind could not follow to its end
	local n=0 incomplete=0 f
	for f in "$RIG"/valgrind/*.log; do
		[ -e "$f" ] || continue
		if ! grep -q 'ERROR SUMMARY:' "$f"; then
			incomplete=$((incomplete + 1))
			echo "---- $f has no ERROR SUMMARY (the process did not end normally)"
			tail -n 20 "$f"
		elif grep -Eq 'ERROR SUMMARY: [1-9]' "$f"; then
			n=$((n + 1))
			echo "---- $f"
			head -n 120 "$f"
		fi
	done
	[ $n = 0 ] && [ $incomplete = 0 ] || ok=0
	keep_logs valgrind "$WORK/build-plain"
	summary+=("valgrind memcheck: suites $suites ($VALGRIND_SUITES), logs with errors: $n, incomplete logs: $incomplete (logs: $LOGS/valgrind)")
	[ $ok = 1 ]
}

if [ $mode != valgrind ]; then
	asan_pass || failed=1
fi
if [ $mode != asan ]; then
	valgrind_pass || failed=1
fi
rig_stop

echo
echo "==> scripts/sanitize.sh summary ($((SECONDS - started)) s)"
printf '  %s\n' "${summary[@]}"
if [ $failed = 0 ]; then
	echo "reports found: 0; all passed"
else
	echo "FAILED: see the reports above and $LOGS"
fi
exit $failed
