#!/usr/bin/env bash
# test/readme.sh: the README's step-by-step set-up, run as it is written.
#
# Every ```sql block of README.md that follows a line
# "<!-- tested: DATABASE -->" is run, in order, with psql (ON_ERROR_STOP)
# in that database: "payments" is made fresh for the run, "postgres" is
# where pg_cron lives.  Then the outcome the README promises is checked:
# the roles exist and can do what it says, the orders were cancelled or
# skipped, and the pg_cron job runs as cron_runner.  Needs the rig up.
source "$(dirname "${BASH_SOURCE[0]}")/shell_common.bash"

DB=payments
TMP=$(mktemp -d /tmp/apc_readme.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

cleanup() {
	q postgres "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'alipayplus-cancellations'" >/dev/null 2>&1 || true
	q postgres "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
	for r in shop_owner shop_app cron_runner ops; do
		q postgres "DROP ROLE IF EXISTS $r" >/dev/null 2>&1
	done
}
cleanup
q postgres "CREATE DATABASE $DB" >/dev/null

# cut the tested blocks out of the README: TMP/NN.DB.sql
$PY - "$REPO/README.md" "$TMP" <<'PY'
import re, sys
lines = open(sys.argv[1], encoding="utf-8").read().split("\n")
n = 0
i = 0
while i < len(lines):
    m = re.match(r"<!-- tested: (\w+) -->$", lines[i])
    if m:
        j = i + 1
        assert lines[j] == "```sql", "a tested marker must precede a ```sql block (line %d)" % (j + 1)
        k = lines.index("```", j + 1)
        n += 1
        with open("%s/%02d.%s.sql" % (sys.argv[2], n, m.group(1)), "w", encoding="utf-8") as f:
            f.write("\n".join(lines[j + 1:k]) + "\n")
        i = k
    i += 1
print("# %d tested blocks in README.md" % n)
PY

# The stale-orders block's orders were initiated at the start of Alipay+'s
# day (UTC+8) and count as stale after a second: just after that midnight,
# wait until they do.
q postgres "SELECT pg_sleep(2.5 - extract(epoch FROM now() - date_trunc('day', now(), 'Asia/Shanghai')))
	WHERE now() - date_trunc('day', now(), 'Asia/Shanghai') < interval '2.5 seconds'" >/dev/null

for f in "$TMP"/*.sql; do
	db=$(basename "$f" .sql)
	db=${db#*.}
	if $PGBIN/psql -X -q -A -v ON_ERROR_STOP=1 -d "$db" -f "$f" >"$f.out" 2>&1; then
		ok "README block $(basename "$f") runs in database $db"
	else
		not_ok "README block $(basename "$f") failed in database $db: $(tail -n 5 "$f.out" | tr '\n' ' ')"
	fi
done

expect "order 42 cancelled through the outbox and the processor" "CANCELLED|1" \
	"$(q $DB "SELECT o.status, c.attempt_count FROM shop.orders o JOIN alipayplus.cancellations c ON c.sent_id = o.payment_request_id WHERE o.order_no = 42")"
expect "stale orders resolved, not cancelled: the two Alipay+ says were paid are paid, the one past its window skipped and left as it was, the shipped one never picked" \
	"100|PAID 101|PENDING 102|PAID 103|SHIPPED" \
	"$(q $DB "SELECT string_agg(order_no || '|' || status, ' ' ORDER BY order_no) FROM shop.orders WHERE order_no >= 100")"
expect "the stale-orders recipe resolves (inquires first) and cancels nothing that was paid" "1|0" \
	"$(cat "$TMP"/*.payments.sql | grep -c "alipayplus_request_resolve_stale('1 second'")|$(q $DB "SELECT count(*) FROM alipayplus.cancellations WHERE sent_id LIKE 'PR_STALE_%'")"
expect "the stale-orders block queued two and reported the one past its window" \
	"queued|2|PR_STALE_100 window_closed|1|PR_STALE_101" \
	"$(cat "$TMP"/*.payments.sql.out | grep -E '^(queued|window_closed)\|[0-9]' | tr '\n' ' ' | sed 's/ $//')"
expect "the pg_cron job runs as cron_runner in database payments" "payments|cron_runner|CALL alipayplus_run_cancellations()" \
	"$(q postgres "SELECT database || '|' || username || '|' || command FROM cron.job WHERE jobname = 'alipayplus-cancellations'")"
expect "ops reads the run history and the attention view, and nothing more" "t|f|f" \
	"$(q $DB "SELECT has_table_privilege('ops', 'alipayplus.processor_runs', 'SELECT'), has_table_privilege('ops', 'alipayplus.cancellations', 'UPDATE'), has_function_privilege('ops', 'alipayplus_signature(text, text, text, text)', 'EXECUTE')")"
expect "shop_app cannot run the processor or sign" "f|f" \
	"$(q $DB "SELECT has_function_privilege('shop_app', 'alipayplus_process_cancellations(integer, interval, bigint)', 'EXECUTE'), has_function_privilege('shop_app', 'alipayplus_signature(text, text, text, text)', 'EXECUTE')")"
expect "nobody in the README is a superuser" "0" \
	"$(q postgres "SELECT count(*) FROM pg_roles WHERE rolname IN ('shop_owner', 'shop_app', 'cron_runner', 'ops') AND rolsuper")"

cleanup
finish
