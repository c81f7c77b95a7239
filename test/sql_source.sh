#!/usr/bin/env bash
# test/sql_source.sh: the SQL of the current version has one source,
# extension/src/*.sql (README, Development).  Each schema, table, index,
# view, function, procedure, trigger, event trigger, comment and grant is
# defined in exactly one place of it (each overload of a routine once); the
# source holds current definitions
# only (no CREATE OR REPLACE, ALTER FUNCTION or DROP: what an update script
# would say is folded into the definition); and every function, procedure,
# table, view, index and trigger of a fresh install of the current version
# is one of those definitions.  The update scripts and the generated install
# script carry the \echo guard against being run by psql.
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

SRC=$REPO/extension/src
DB=apc_sql_source
CURRENT=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$REPO/alipayplus_cancel.control")

shopt -s nullglob
files=("$SRC"/*.sql)
if [ ${#files[@]} -eq 0 ]; then
	not_ok "no SQL source in extension/src/"
	finish
fi
ok "the SQL source of $CURRENT: ${#files[@]} files in extension/src/"

# definitions FILE...: one line "KIND KEY<TAB>FILE" per definition.  Names
# in the extension's schema lose their @extschema@. prefix; a trigger is
# keyed by its table too; a grant by its whole statement, spaces squeezed.
definitions() {
	awk '
	function out(k) { sub(/@extschema@\./, "", k); gsub(/[ \t]+/, " ", k); printf "%s\t%s\n", k, FILENAME }
	stmt != "" { stmt = stmt " " $0; if ($0 ~ /;/) { out(stmt); stmt = "" } next }
	/^(GRANT|REVOKE) / { if ($0 ~ /;/) out($0); else stmt = $0; next }
	match($0, /^CREATE (OR REPLACE )?(FUNCTION|PROCEDURE) [^( ]+\(/) {
		s = substr($0, 1, RLENGTH - 1); sub(/^CREATE (OR REPLACE )?(FUNCTION|PROCEDURE) /, "", s)
		out("routine " s); next }
	match($0, /^CREATE (UNLOGGED )?TABLE [^ (]+/) { s = substr($0, 1, RLENGTH); sub(/.* /, "", s); out("table " s); next }
	match($0, /^CREATE (OR REPLACE )?VIEW [^ ]+/) { s = substr($0, 1, RLENGTH); sub(/.* /, "", s); out("view " s); next }
	/^CREATE (UNIQUE )?INDEX / { s = $0; sub(/^CREATE (UNIQUE )?INDEX /, "", s); sub(/ .*/, "", s); out("index alipayplus." s); next }
	/^CREATE EVENT TRIGGER / { out("event_trigger " $4); next }
	/^CREATE TRIGGER / {
		t = $3; s = $0; sub(/.* ON /, "", s); sub(/ .*/, "", s); out("trigger " t " on " s); next }
	/^CREATE SCHEMA / { s = $3; sub(/;$/, "", s); out("schema " s); next }
	/^COMMENT ON / { s = $0; sub(/^COMMENT ON /, "", s); sub(/ IS( .*)?$/, "", s); out("comment " s); next }
	' "$@"
}

defs=$(definitions "${files[@]}")
n_defs=$(printf '%s\n' "$defs" | grep -c .)
# (a routine's overloads share its key: the check against a fresh install
# below counts them)
dups=$(printf '%s\n' "$defs" | cut -f1 | grep -v '^routine ' | sort | uniq -d)
if [ -z "$dups" ]; then
	ok "each of the $n_defs definitions of the source is in exactly one place (tables, indexes, views, triggers, comments, grants; routines below)"
else
	while IFS= read -r d; do
		not_ok "defined more than once in the source: $d (in $(printf '%s\n' "$defs" | awk -F'\t' -v k="$d" '$1 == k { sub(/.*\//, "", $2); printf "%s ", $2 }'))"
	done <<<"$dups"
fi
for kind in "routine" "table" "view" "trigger" "grant"; do
	case $kind in
	grant) pat='^(GRANT|REVOKE) ' ;;
	*) pat="^$kind " ;;
	esac
	[ "$(printf '%s\n' "$defs" | grep -cE "$pat")" -gt 0 ] || not_ok "the source check found no $kind definition: the parser is broken"
done

stale=$(grep -nE '^(CREATE OR REPLACE|DROP|ALTER (FUNCTION|PROCEDURE|ROUTINE))\b' "${files[@]}" | sed "s|$SRC/||" || true)
expect "the source holds current definitions only (no CREATE OR REPLACE, DROP, ALTER FUNCTION)" "" "$stale"

missing=
for f in "${files[@]}" "$REPO"/extension/alipayplus_cancel--*.sql; do
	grep -qE '^\\echo Use "(CREATE EXTENSION|ALTER EXTENSION) alipayplus_cancel.*" to load this file\. \\quit$' "$f" ||
		missing="$missing $(basename "$f")"
done
expect "every source file and script has the \\echo guard" "" "$missing"

# every object of a fresh install is defined in the source, once
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q $DB "CREATE EXTENSION alipayplus_cancel" >/dev/null || not_ok "CREATE EXTENSION"
objects=$(q $DB "
	WITH members AS (
		SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
		WHERE e.extname = 'alipayplus_cancel' AND d.deptype = 'e'
	)
	SELECT 'routine ' || CASE WHEN p.pronamespace = 'alipayplus'::regnamespace THEN 'alipayplus.' ELSE '' END || p.proname
	FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
	UNION ALL
	SELECT CASE c.relkind WHEN 'v' THEN 'view ' ELSE 'table ' END || c.oid::regclass
	FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid AND c.relkind IN ('r', 'v', 'p')
	UNION ALL
	SELECT 'index ' || i.indexrelid::regclass
	FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
	WHERE NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid)
	UNION ALL
	SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass
	FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid AND NOT t.tgisinternal
	UNION ALL
	SELECT 'event_trigger ' || et.evtname
	FROM members m JOIN pg_event_trigger et ON m.classid = 'pg_event_trigger'::regclass AND et.oid = m.objid
	ORDER BY 1")
q postgres "DROP DATABASE $DB WITH (FORCE)" >/dev/null 2>&1
n_objects=$(printf '%s\n' "$objects" | grep -c .)
[ "$n_objects" -gt 30 ] || not_ok "a fresh install has only $n_objects functions, tables, views, indexes and triggers"
# each object once; a routine with overloads as many times as it has them
# (CREATE EXTENSION refused a signature defined twice)
notonce=
while read -r want o; do
	n=$(printf '%s\n' "$defs" | cut -f1 | grep -cxF "$o" || true)
	[ "$n" -eq "$want" ] || notonce="$notonce; $o ($n times, $want in the install)"
done < <(printf '%s\n' "$objects" | sort | uniq -c)
# and no routine of the source is missing from the install
extra=$(comm -23 <(printf '%s\n' "$defs" | cut -f1 | grep '^routine ' | sort -u) <(printf '%s\n' "$objects" | grep '^routine ' | sort -u))
expect "each of the $n_objects functions, procedures, tables, views, indexes and triggers of a fresh $CURRENT install is defined once in the source (each overload of a routine once)" \
	"" "${notonce#; }"
expect "every routine of the source is in a fresh $CURRENT install" "" "$extra"

finish
