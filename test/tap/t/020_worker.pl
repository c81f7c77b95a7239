# The background worker (issue 14): a cluster with alipayplus_cancel in
# shared_preload_libraries and alipayplus.database_name = 'shopdb', and no
# pg_cron.  The worker waits for the database and for the extension,
# cancels what a committed transaction queued (woken by the commit, not by
# its 30 s timer), is restarted after pg_terminate_backend with nothing
# lost, picks up a changed setting on SIGHUP, backs off while the gateway
# is unreachable, goes on when an owner's trigger fails, waits quietly
# through DROP EXTENSION, lets DROP DATABASE and ALTER DATABASE RENAME of
# its database go through and comes back when the name exists again.  The
# postmaster never restarts, and the log has no FATAL.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use AlipayplusTap;

my $tag = 'wk-' . int(time()) . "-$$";
my $order_no = 0;

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf('postgresql.conf',
	apc_conf()
	  . "alipayplus.database_name = 'shopdb'\n"
	  . "alipayplus.max_concurrency = 4\n"
	  . "log_line_prefix = '%m [%p] %b '\n");
$node->start;

# how far the log has been checked
my $log_offset = 0;

sub wait_log
{
	my ($re, $what) = @_;
	my $found = $node->wait_for_log($re, $log_offset);
	ok($found, $what);
	$log_offset = $found if $found;
	return;
}

sub worker_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker'");
}

# queue a cancellation of a new order with request id $id, committed alone
sub queue
{
	my ($id) = @_;
	$order_no++;
	$node->safe_psql('shopdb', qq{
		INSERT INTO shop.orders (order_no, payment_request_id) VALUES ($order_no, '$id');
		SELECT alipayplus_request_cancel(payment_request_id => '$id');
	});
	return;
}

# how many requests for exactly $id the gateway has logged
sub sent
{
	my ($id) = @_;
	return scalar(grep { $_->{id} eq $id } apc_gateway_requests($id));
}

sub wait_sent
{
	my ($id, $what) = @_;
	my $until = time() + 60;
	usleep(50_000) while sent($id) == 0 && time() < $until;
	cmp_ok(sent($id), '>', 0, $what);
	return;
}

sub state_of
{
	my ($id) = @_;
	return $node->safe_psql('shopdb', qq{
		SELECT o.status || '|' || coalesce(c.state, '-') || '|' || coalesce(c.needs_attention::text, '-')
		FROM shop.orders o LEFT JOIN alipayplus.cancellations c ON c.payment_request_id = o.payment_request_id
		WHERE o.payment_request_id = '$id'});
}

sub wait_cancelled
{
	my ($id, $what) = @_;
	ok( $node->poll_query_until('shopdb',
			"SELECT status = 'CANCELLED' FROM shop.orders WHERE payment_request_id = '$id'"),
		$what);
	return;
}

# --- the database does not exist yet: the launcher waits, once in the log
wait_log(qr/alipayplus_cancel worker waits for database "shopdb", which does not exist/,
	'launcher: waits for the missing database');
is(worker_pid(), '', 'no worker without its database');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel launcher' AND datid IS NULL"),
	'1', 'the launcher is connected to no database');

# --- the database, without the extension: the worker waits quietly
$node->safe_psql('postgres', 'CREATE DATABASE shopdb');
wait_log(qr/alipayplus_cancel worker waits: extension "alipayplus_cancel" is not created in this database/,
	'worker: waits for the extension');
ok( $node->poll_query_until('postgres',
		"SELECT datname = 'shopdb' FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker'"),
	'pg_stat_activity shows the worker, backend_type alipayplus_cancel worker, in shopdb');

# --- the extension: served without any pg_cron job, woken by the commit
apc_shop($node, 'shopdb');
wait_log(qr/alipayplus_cancel worker found the extension; serving the queue/,
	'worker: serves once the extension is created');
queue("$tag-a");
wait_cancelled("$tag-a", 'a committed request is cancelled by the worker');
# the worker ran just now and found nothing else due: its timer is 30 s away
my $t0 = time();
queue("$tag-b");
ok( $node->poll_query_until('shopdb',
		"SELECT status = 'CANCELLED' FROM shop.orders WHERE payment_request_id = '$tag-b'
		 OR clock_timestamp() > to_timestamp($t0 + 10)"),
	'waiting for the second request');
is(state_of("$tag-b"), 'CANCELLED|CANCELLED|false',
	'the second request is cancelled within 10 s of COMMIT (woken by the commit, not the 30 s timer)');

# --- ROLLBACK queues nothing, sends nothing
$node->safe_psql('shopdb', qq{
	INSERT INTO shop.orders (order_no, payment_request_id) VALUES (1000, '$tag-rb');
	BEGIN;
	SELECT alipayplus_request_cancel(payment_request_id => '$tag-rb');
	ROLLBACK;
});
queue("$tag-after-rb");
wait_cancelled("$tag-after-rb", 'a request committed after the rollback is served');
is(state_of("$tag-rb"), 'PENDING|-|-', 'the rolled-back request left no ledger row, the order PENDING');
is(sent("$tag-rb"), 0, 'nothing was sent for the rolled-back request');

# --- the worker reports its statistics as it goes, not only when it exits:
#     autovacuum and autoanalyze of the ledger count on them (before: the
#     attempts it inserted stayed invisible to pg_stat_user_tables for the
#     worker's whole life, so the ledger was never vacuumed or analyzed,
#     its indexes grew and its plans went stale)
ok( $node->poll_query_until('shopdb',
		"SELECT n_tup_ins >= 3 FROM pg_stat_user_tables
		 WHERE relid = 'alipayplus.cancel_attempts'::regclass"),
	'pg_stat_user_tables counts the attempts the running worker inserted (a, b, after-rb)');
ok( $node->poll_query_until('shopdb',
		"SELECT n_tup_upd >= 4 FROM pg_stat_user_tables
		 WHERE relid = 'alipayplus.cancellations'::regclass"),
	'and the ledger rows it updated');

# --- pg_terminate_backend while a call is in flight: restarted, nothing lost
my $pid = worker_pid();
queue("slow-3000-$tag-term");
wait_sent("slow-3000-$tag-term", 'the slow call is in flight');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker' AND pid <> $pid"),
	'a new worker is started after pg_terminate_backend');
wait_cancelled("slow-3000-$tag-term", 'the request in flight at the termination ends CANCELLED');
queue("$tag-after-term");
wait_cancelled("$tag-after-term", 'the new worker serves new requests');

# --- pg_terminate_backend of the launcher: the postmaster starts it again,
#     its new worker takes over, one worker in the end
my $launcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel launcher'");
$pid = worker_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
ok( $node->poll_query_until('postgres', qq{
		SELECT count(*) FILTER (WHERE backend_type = 'alipayplus_cancel launcher' AND pid <> $launcher) = 1
		   AND count(*) FILTER (WHERE backend_type = 'alipayplus_cancel worker') = 1
		   AND count(*) FILTER (WHERE backend_type = 'alipayplus_cancel worker' AND pid = $pid) = 0
		FROM pg_stat_activity}),
	'launcher terminated: a new launcher, and exactly one worker, a new one');
wait_log(qr/alipayplus_cancel worker stops: another worker has taken over/,
	'the old worker stopped when the new one took over');
queue("$tag-after-launcher");
wait_cancelled("$tag-after-launcher", 'the new worker serves');

# --- SIGHUP, gateway down: a changed gateway_url is used by the next run;
#     the worker backs off and serves the row when the gateway is back
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET alipayplus.gateway_url = 'https://localhost:1';
	SELECT pg_reload_conf();
});
sleep(1);
queue("$tag-down");
ok( $node->poll_query_until('shopdb', qq{
		SELECT count(*) >= 2 FROM alipayplus.cancel_attempts a JOIN alipayplus.cancellations c USING (cancellation_id)
		WHERE c.payment_request_id = '$tag-down' AND a.result_code = 'local.connect_failed'}),
	'gateway unreachable: two attempts failed and were retried');
is(sent("$tag-down"), 0, 'nothing reached the gateway while the URL was wrong');
# the retries are the worker's own (no commit wakes it): it slept until the
# row's next_attempt_at (retry_base_ms 200), not its 30 s timer
is( $node->safe_psql('shopdb', qq{
		SELECT max(a.attempted_at) - min(a.attempted_at) < interval '10 s'
		FROM (SELECT a.attempted_at FROM alipayplus.cancel_attempts a
			JOIN alipayplus.cancellations c USING (cancellation_id)
			WHERE c.payment_request_id = '$tag-down' ORDER BY a.attempt_id LIMIT 2) a}),
	't', 'the retry was made when it came due, well before the worker\'s 30 s timer');
is(state_of("$tag-down"), 'CANCELLING|CANCELLING|false', 'the row waits for its retry, not flagged');
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET alipayplus.gateway_url;
	SELECT pg_reload_conf();
});
wait_cancelled("$tag-down", 'after the reload the worker reaches the gateway and cancels');
is(sent("$tag-down"), 1, 'one request reached the gateway');

# --- an owner's trigger fails: the row is flagged, the worker goes on
$pid = worker_pid();
$node->safe_psql('shopdb', q{
	CREATE FUNCTION shop.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.payment_request_id LIKE 'trigfail%' AND NEW.status = 'CANCELLED' THEN
			RAISE EXCEPTION 'the shop refuses this status change';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.refuse();
});
queue("trigfail-$tag");
queue("$tag-after-trig");
wait_cancelled("$tag-after-trig", 'the worker goes on after an owner trigger failed');
ok( $node->poll_query_until('shopdb',
		"SELECT needs_attention FROM alipayplus.cancellations WHERE payment_request_id = 'trigfail-$tag'"),
	'the row whose order trigger failed is flagged');
is(worker_pid(), $pid, 'the same worker is still running');

# --- DROP EXTENSION: the worker waits quietly; CREATE EXTENSION later
$node->safe_psql('shopdb', 'DROP EXTENSION alipayplus_cancel CASCADE; DROP SCHEMA shop CASCADE');
wait_log(qr/alipayplus_cancel worker waits: extension "alipayplus_cancel" is not created in this database/,
	'after DROP EXTENSION the worker waits for it');
apc_shop($node, 'shopdb');
$order_no = 2000;
queue("$tag-recreated");
wait_cancelled("$tag-recreated", 'after CREATE EXTENSION the worker serves again');

# --- DROP DATABASE of the worker's database goes through
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shopdb');
is($ret, 0, 'DROP DATABASE of the worker\'s database succeeds');
is($err, '', 'DROP DATABASE: no error') or diag $err;
wait_log(qr/alipayplus_cancel worker waits for database "shopdb", which does not exist/,
	'after the DROP the launcher waits for the database');
$node->safe_psql('postgres', 'CREATE DATABASE shopdb');
apc_shop($node, 'shopdb');
$order_no = 3000;
queue("$tag-newdb");
wait_cancelled("$tag-newdb", 'the worker serves the database created again under the name');

# --- ALTER DATABASE RENAME goes through; the worker comes back with the name
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE shopdb RENAME TO shopdb_old');
is($ret, 0, 'ALTER DATABASE RENAME of the worker\'s database succeeds');
is($err, '', 'RENAME: no error') or diag $err;
wait_log(qr/alipayplus_cancel worker waits for database "shopdb", which does not exist/,
	'after the RENAME the launcher waits for the name');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker'"),
	'0', 'no worker in the renamed database');
$node->safe_psql('postgres', 'ALTER DATABASE shopdb_old RENAME TO shopdb');
$order_no = 4000;
queue("$tag-renamed-back");
wait_cancelled("$tag-renamed-back", 'renamed back: the worker serves it again');

# every request was sent once, or (the one terminated) at most twice
for my $id ("$tag-a", "$tag-b", "$tag-after-rb", "$tag-after-term", "$tag-after-launcher", "$tag-recreated",
	"$tag-newdb", "$tag-renamed-back")
{
	is(sent($id), 1, "$id: one request to the gateway");
}

# --- the postmaster never restarted; no FATAL, no crash
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no process was terminated by a signal');
unlike($log, qr/all server processes terminated; reinitializing/, 'the postmaster never reinitialized');
unlike($log, qr/FATAL/, 'no FATAL in the log');
my @errors = ($log =~ /ERROR:.*/g);
cmp_ok(scalar(@errors), '<=', 2, 'at most two ERROR lines in the log (no error loop)')
  or diag join("\n", @errors);
done_testing();
