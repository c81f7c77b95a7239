#!/usr/bin/env bash
# test/encodings.sh: answers with non-ASCII text work in databases whose
# encoding is not UTF-8, and what is stored there is valid and dumpable.
#
# Uses the main rig cluster (settings from its postgresql.conf) and its own
# databases in LATIN1, SQL_ASCII and EUC_JP (LC_COLLATE/LC_CTYPE C).  In
# each, with nothing configured but CREATE EXTENSION:
#
# - "unicode-..." (a signed F PROCESS_FAIL whose resultMessage holds the
#   escapes \u00e9 \u4e2d \ud83d\ude00 and a raw UTF-8 e-acute) returns F
#   without an error; the message keeps what the database encoding can
#   hold and escapes the rest (\u4e2d, \U0001f600), read here in UTF-8;
# - "otherclientbytes-..." (a Client-Id with bytes 0xff 0xfe 0x01) is U
#   local.client_id_mismatch, the bytes escaped in error_detail;
# - "deepjson-..." is U local.bad_response; a plain call is S;
# - every text column of the attempts converts to UTF-8 (convert_to), and
#   pg_dump of the database restores into a new one with the same rows.
#
# Run as root from the repository:  bash test/encodings.sh

source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

TAG=$(date +%s%N)
TMP=$(mktemp -d /tmp/apc_encodings.XXXXXX)
chmod 0755 "$TMP"
export PGCLIENTENCODING=UTF8

cleanup() {
	local e
	for e in latin1 sql_ascii euc_jp; do
		q postgres "DROP DATABASE IF EXISTS apc_enc_$e WITH (FORCE)" >/dev/null 2>&1
		q postgres "DROP DATABASE IF EXISTS apc_enc_${e}_copy WITH (FORCE)" >/dev/null 2>&1
	done
	rm -rf "$TMP"
}
trap cleanup EXIT

E_ACUTE=$'\u00e9'
ZHONG=$'\u4e2d'
SMILE=$'\U0001f600'

# check_db ENCODING EXPECTED_MESSAGE
check_db() {
	local enc=$1 want=$2 db r
	db=apc_enc_$(echo "$enc" | tr 'A-Z' 'a-z')
	echo "# database $db, encoding $enc"
	q postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
	if ! q postgres "CREATE DATABASE $db ENCODING '$enc' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null ||
		! q "$db" "CREATE EXTENSION alipayplus_cancel" >/dev/null; then
		not_ok "$enc: create database and extension"
		return
	fi
	expect "$enc: the database encoding" "$enc" "$(q "$db" "SELECT getdatabaseencoding()")"

	r=$(q "$db" "SELECT result_status || '/' || result_code || '/' || result_message
		FROM alipayplus_cancel_payment(payment_request_id => 'unicode-$enc-$TAG')" 2>&1)
	expect "$enc: unicode answer: F PROCESS_FAIL, the message in the database encoding" \
		"F/PROCESS_FAIL/$want" "$r"
	expect "$enc: the stored attempt holds the same message" "$want" \
		"$(q "$db" "SELECT result_message FROM alipayplus.cancel_attempts WHERE sent_id = 'unicode-$enc-$TAG'" 2>&1)"

	r=$(q "$db" "SELECT result_status || '/' || result_code
		FROM alipayplus_cancel_payment(payment_request_id => 'otherclientbytes-$enc-$TAG')" 2>&1)
	expect "$enc: foreign Client-Id with bytes 0xff 0xfe 0x01" "U/local.client_id_mismatch" "$r"
	r=$(q "$db" "SELECT error_detail FROM alipayplus.cancel_attempts
		WHERE sent_id = 'otherclientbytes-$enc-$TAG'" 2>&1)
	expect "$enc: the bytes are escaped in error_detail" \
		'response Client-Id "OTHER\xff\xfe\x01X" differs from alipayplus.client_id "SANDBOX_5X00000000000000"' "$r"

	r=$(q "$db" "SELECT result_status || '/' || result_code
		FROM alipayplus_cancel_payment(payment_request_id => 'deepjson-$enc-$TAG')" 2>&1)
	expect "$enc: JSON nested 100000 levels deep" "U/local.bad_response" "$r"
	r=$(q "$db" "SELECT result_status || '/' || result_code
		FROM alipayplus_cancel_payment(payment_request_id => 'plain-$enc-$TAG')" 2>&1)
	expect "$enc: a plain call" "S/SUCCESS" "$r"

	r=$(q "$db" "SELECT count(*) FROM alipayplus.cancel_attempts a,
		LATERAL (SELECT convert_to(a.result_code, 'UTF8'), convert_to(a.result_message, 'UTF8'),
			convert_to(a.error_detail, 'UTF8'), convert_to(a.acquirer_id, 'UTF8'),
			convert_to(a.psp_id, 'UTF8')) c" 2>&1)
	expect "$enc: every text column of the 4 attempts converts to UTF-8" 4 "$r"

	# dump and restore into a new database of the same encoding
	q postgres "DROP DATABASE IF EXISTS ${db}_copy WITH (FORCE)" >/dev/null 2>&1
	if $PGBIN/pg_dump -d "$db" -f "$TMP/$db.sql" 2>"$TMP/$db.dump.err" &&
		q postgres "CREATE DATABASE ${db}_copy ENCODING '$enc' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null &&
		$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -d "${db}_copy" -f "$TMP/$db.sql" >"$TMP/$db.restore.out" 2>&1; then
		ok "$enc: pg_dump and restore"
	else
		not_ok "$enc: pg_dump and restore: $(cat "$TMP/$db.dump.err" "$TMP/$db.restore.out" 2>/dev/null | head -n 5)"
	fi
	local sig="SELECT string_agg(md5(a::text), ',' ORDER BY attempt_id) FROM alipayplus.cancel_attempts a"
	expect "$enc: the restored attempts equal the dumped ones" \
		"$(q "$db" "$sig")" "$(q "${db}_copy" "$sig" 2>&1)"
}

check_db LATIN1 "caf$E_ACUTE \\u4e2d \\U0001f600 raw $E_ACUTE"
# SQL_ASCII has no conversions: valid UTF-8 is stored as it came, as
# PostgreSQL itself does with text from a UTF-8 client
check_db SQL_ASCII "caf$E_ACUTE $ZHONG $SMILE raw $E_ACUTE"
check_db EUC_JP "caf$E_ACUTE $ZHONG \\U0001f600 raw $E_ACUTE"

finish
