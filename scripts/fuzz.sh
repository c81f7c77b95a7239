#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: build the libFuzzer harnesses of test/fuzz/ and
# run each for SECONDS (default 60) on a copy of its seed corpus.
#
# The harnesses compile the extension's own parsers (src/json.c and
# src/signing.c) with clang-14 and AddressSanitizer, UndefinedBehaviorSanitizer
# and LeakSanitizer, linked with PostgreSQL's frontend library and the small
# backend stand-in test/fuzz/runtime.c; no PostgreSQL cluster is needed.
# It installs what is missing (apt-get), builds into .fuzz/ at the top of the
# tree (ignored by git) and never writes into test/fuzz/.  Prints one line
# per harness and exits non-zero if any fails to build, crashes, leaks,
# times out or runs out of memory; the input that did it is kept under
# .fuzz/run/<harness>/ and named in the output.
set -euo pipefail

SECONDS_EACH=${1:-60}
if ! [[ $SECONDS_EACH =~ ^[1-9][0-9]*$ ]]; then
	echo "usage: $0 [SECONDS]  (a positive whole number; default 60)" >&2
	exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PACKAGES="clang-14 libclang-rt-14-dev llvm-14 binutils postgresql-15 postgresql-server-dev-15 libssl-dev libcurl4-openssl-dev pkg-config"
rig_install_deps

HARNESSES="response network_text signature key body"
FUZZ_SRC=$REPO/test/fuzz
BUILD=$REPO/.fuzz
CC=clang-14
INCLUDEDIR_SERVER=$($PG_CONFIG --includedir-server)
PKGLIBDIR=$($PG_CONFIG --pkglibdir)
# libpgcommon.a and libpgport.a: Debian puts them in pkglibdir
PGLIB=$PKGLIBDIR
[ -f "$PGLIB/libpgcommon.a" ] || PGLIB=$($PG_CONFIG --libdir)

# input size caps, read from the extension's source
max_response=$(($(sed -n 's/^#define APS_MAX_RESPONSE_BYTES[[:space:]]*//p' "$REPO/src/alipayplus_cancel.h")))
max_key=$(($(sed -n 's/^#define APS_MAX_KEY_FILE_BYTES[[:space:]]*//p' "$REPO/src/signing.c")))
max_header=102400		# libcurl's CURL_MAX_HTTP_HEADER: no longer header reaches transport.c
# body: a list of pieces, some of them 64-byte blocks (see fuzz_body.c)
declare -A MAX_LEN=([response]=$max_response [network_text]=$max_response
					[signature]=$max_header [key]=$max_key [body]=4096)

CFLAGS=(-g -O1 -fno-omit-frame-pointer -fwrapv -fno-strict-aliasing
	-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
	-Wall -Wextra -Werror -Wno-unused-parameter -Wno-ignored-attributes
	-D_GNU_SOURCE -I"$REPO/src" -I"$FUZZ_SRC" -I"$INCLUDEDIR_SERVER"
	-DAPS_FUZZ_PKGLIBDIR="\"$PKGLIBDIR\""
	-DAPS_FUZZ_VECTORS="\"$REPO/test/vectors\"")
read -r -a CURL_SSL_CFLAGS <<<"$(pkg-config --cflags libcurl openssl)"
read -r -a CURL_SSL_LIBS <<<"$(pkg-config --libs libcurl openssl)"
CFLAGS+=("${CURL_SSL_CFLAGS[@]}")

say "building the fuzz harnesses into $BUILD"
rm -rf "$BUILD"
mkdir -p "$BUILD/obj" "$BUILD/bin" "$BUILD/run"
build_failed=()
build() {
	local o
	for src in "$REPO/src/json.c" "$REPO/src/signing.c" "$FUZZ_SRC/runtime.c"; do
		o=$BUILD/obj/$(basename "$src" .c).o
		$CC "${CFLAGS[@]}" -c "$src" -o "$o" || return 1
	done
	# PostgreSQL's JSON parser, with its \u conversion routed through
	# runtime.c (see there)
	(cd "$BUILD/obj" && ar x "$PGLIB/libpgcommon.a" jsonapi.o) || return 1
	objcopy --redefine-sym unicode_to_utf8=aps_fuzz_json_unicode_to_utf8 \
		"$BUILD/obj/jsonapi.o" || return 1
	# the backend's conv.c (UtfToLocal, for the conversion libraries
	# runtime.c loads), from the bitcode the server package ships for JIT
	$CC -c -O1 "$PKGLIBDIR/bitcode/postgres/utils/mb/conv.bc" \
		-o "$BUILD/obj/conv.o" || return 1
}
if ! build; then
	echo "fuzz: the common objects did not build" >&2
	exit 1
fi
link() {
	local h=$1
	shift
	$CC -fsanitize=fuzzer,address,undefined "$@" "$BUILD/obj/fuzz_$h.o" \
		"$BUILD/obj/runtime.o" "$PGLIB/libpgcommon.a" "$PGLIB/libpgport.a" \
		"${CURL_SSL_LIBS[@]}" -ldl -lm -o "$BUILD/bin/fuzz_$h"
}
for h in $HARNESSES; do
	if [ "$h" = body ]; then
		# includes src/transport.c for its static write_body(); only that
		# is kept (see fuzz_body.c)
		if ! $CC "${CFLAGS[@]}" -ffunction-sections -fdata-sections \
			-fsanitize-coverage-allowlist="$FUZZ_SRC/fuzz_body.allowlist" \
			-c "$FUZZ_SRC/fuzz_body.c" -o "$BUILD/obj/fuzz_body.o" ||
			! link body -Wl,--gc-sections; then
			build_failed+=("$h")
		fi
	elif ! $CC "${CFLAGS[@]}" -c "$FUZZ_SRC/fuzz_$h.c" -o "$BUILD/obj/fuzz_$h.o" ||
		! link "$h" -rdynamic "$BUILD/obj/json.o" "$BUILD/obj/signing.o" \
			"$BUILD/obj/jsonapi.o" "$BUILD/obj/conv.o"; then
		# -rdynamic: the conversion libraries call back into the harness
		build_failed+=("$h")
	fi
done

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_SYMBOLIZER_PATH=/usr/bin/llvm-symbolizer-14

say "fuzzing each harness for $SECONDS_EACH s"
summary=()
failed=0
for h in $HARNESSES; do
	if [[ " ${build_failed[*]} " == *" $h "* ]]; then
		summary+=("$(printf '%-14s FAIL  did not build' "$h")")
		failed=1
		continue
	fi
	run=$BUILD/run/$h
	mkdir -p "$run/corpus" "$run/artifacts"
	cp "$FUZZ_SRC/$h"/* "$run/corpus/"
	seeds=$(find "$run/corpus" -type f | wc -l)
	dict=()
	[ -f "$FUZZ_SRC/$h.dict" ] && dict=(-dict="$FUZZ_SRC/$h.dict")
	rc=0
	"$BUILD/bin/fuzz_$h" -max_total_time="$SECONDS_EACH" -timeout=10 \
		-rss_limit_mb=2560 -malloc_limit_mb=2048 -max_len="${MAX_LEN[$h]}" \
		-print_final_stats=1 -artifact_prefix="$run/artifacts/" "${dict[@]}" \
		"$run/corpus" >"$run/log" 2>&1 || rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run/log" | tail -n 1)
	cov=$( (grep -o 'cov: [0-9]*' "$run/log" || true) | tail -n 1 | cut -d' ' -f2)
	ft=$( (grep -o 'ft: [0-9]*' "$run/log" || true) | tail -n 1 | cut -d' ' -f2)
	units=$(find "$run/corpus" -type f | wc -l)
	artifact=$(find "$run/artifacts" -type f | head -n 1)
	if [ "$rc" -eq 0 ] && [ -z "$artifact" ]; then
		result=PASS
	else
		result="FAIL (exit $rc: $(grep -m1 -o 'ERROR: [A-Za-z]*: [^ ]*\( [a-z-]*\)\?\|check failed: .*\|ERROR raised: .*' "$run/log" || echo 'see log'))"
		failed=1
	fi
	summary+=("$(printf '%-14s %-4s execs %s, coverage %s (features %s), corpus %s (seeds %s)%s' \
		"$h" "${result%% *}" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$units" "$seeds" \
		"${artifact:+, input: $artifact}")")
	if [ "$result" != PASS ]; then
		echo "--- $h: ${result#FAIL }; log: $run/log"
		grep -A 30 -m1 '^==[0-9]*==ERROR\|runtime error\|check failed\|ERROR raised\|libFuzzer: ' "$run/log" | head -n 40 || tail -n 40 "$run/log"
	fi
done

say "fuzz summary ($SECONDS_EACH s each)"
printf '%s\n' "${summary[@]}"
exit $failed
