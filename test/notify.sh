#!/usr/bin/env bash
# test/notify.sh: alipayplus_request_cancel sends NOTIFY
# alipayplus_cancellations with the cancellation id once its transaction
# commits: one notification after COMMIT, none after ROLLBACK (nor for a
# rolled-back savepoint), none for a repeated request of a payment already
# queued (issue 14, item 6: the worker's wake-up relies on it).
#
# Run as root from the repository, with the rig up:  bash test/notify.sh
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"
set +e

DB=apc_notify
TAG=$(date +%s%N)
q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
q postgres "CREATE DATABASE $DB" >/dev/null || { not_ok "create database $DB"; finish; }
q "$DB" "CREATE EXTENSION alipayplus_cancel" >/dev/null || { not_ok "create extension"; finish; }

# listen SQL...: run the statements in one session that LISTENs first; the
# notifications it received, one "payload" per line
listen() {
	local args=(-c "LISTEN alipayplus_cancellations") s
	for s in "$@"; do
		args+=(-c "$s")
	done
	$PGBIN/psql -X -qAt -d "$DB" "${args[@]}" -c "SELECT 1" 2>&1 |
		sed -n 's/^Asynchronous notification "alipayplus_cancellations" with payload "\([^"]*\)" received.*/\1/p'
}

cid() { q "$DB" "SELECT cancellation_id FROM alipayplus.cancellations WHERE sent_id = '$1'"; }

# expect_id NAME ID GOT: GOT is exactly ID's ledger row id, which must exist
expect_id() {
	local id
	id=$(cid "$2")
	if [ -z "$id" ]; then
		not_ok "$1: no ledger row for $2"
	else
		expect "$1" "$id" "$3"
	fi
}

got=$(listen "BEGIN" "SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-commit-$TAG')" "COMMIT")
expect_id "one notification with the id after COMMIT" "n-commit-$TAG" "$got"

got=$(listen "BEGIN" "SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-rollback-$TAG')" "ROLLBACK")
expect "none after ROLLBACK (and no ledger row)" "|" "$got|$(cid "n-rollback-$TAG")"

got=$(listen "BEGIN" "SAVEPOINT a" "SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-savepoint-$TAG')" \
	"ROLLBACK TO SAVEPOINT a" "SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-kept-$TAG')" "COMMIT")
expect_id "a rolled-back savepoint's request sends none, the committed one sends its id" "n-kept-$TAG" "$got"

got=$(listen "SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-commit-$TAG')")
expect "none for a repeated request of a payment already queued" "" "$got"

got=$(listen "BEGIN" "SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-twice-$TAG')" \
	"SELECT 1 FROM alipayplus_request_cancel(payment_request_id => 'n-twice-$TAG')" "COMMIT")
expect_id "one for a payment requested twice in one transaction" "n-twice-$TAG" "$got"

q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
finish
