#!/usr/bin/env bash
# test/tzabbrev.sh: a session's date-time settings cannot change what an
# answer means.  The Response-Time of an answer is checked by shape and
# calendar alone: a timezone_abbreviations set in which "T" is a zone, or
# in which "Z" names a zone that does not exist (both installed here into
# the server's timezonesets folder for the test, and removed after), must
# neither make a good answer U nor raise an error; an odd TimeZone and
# DateStyle neither.  Runs as root (it writes into the server's share folder).
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

SETS=$($PG_CONFIG --sharedir)/timezonesets
trap 'rm -f "$SETS/ApsTestT" "$SETS/ApsTestZ"' EXIT
printf 'T 3600\n' >"$SETS/ApsTestT"
printf 'Z Nowhere/Nothing\n' >"$SETS/ApsTestZ"
chmod 0644 "$SETS/ApsTestT" "$SETS/ApsTestZ"
TAG=$(date +%s%N)

call() {	# settings id
	$PGBIN/psql -X -qAt -d postgres -c "$1" \
		-c "SELECT result_status || ' ' || result_code FROM alipayplus_cancel_payment(payment_request_id => '$2')" 2>&1 | tail -n 1
}

q postgres "CREATE EXTENSION IF NOT EXISTS alipayplus_cancel" >/dev/null
expect "T as a zone: an ordinary answer is still S" "S SUCCESS" \
	"$(call "SET timezone_abbreviations = 'ApsTestT'" "tz-t-$TAG")"
expect "T as a zone: a Z answer is still S" "S SUCCESS" \
	"$(call "SET timezone_abbreviations = 'ApsTestT'" "zulutime-tz-t-$TAG")"
expect "Z as a zone that does not exist: a Z answer is S, not an error" "S SUCCESS" \
	"$(call "SET timezone_abbreviations = 'ApsTestZ'" "zulutime-tz-z-$TAG")"
expect "an odd TimeZone and DateStyle: still S" "S SUCCESS" \
	"$(call "SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'SQL, DMY'" "tz-odd-$TAG")"
expect "and a bad time is still refused under them" "U local.bad_signature" \
	"$(call "SET timezone_abbreviations = 'ApsTestT'" "rtime-feb29-tz-$TAG")"
finish
