# The background worker against what a real shop's database does to it
# (found in review of issue 14):
#  1. the database owner, without CREATEDB, tries ALTER DATABASE RENAME, and
#     DROP DATABASE is tried inside a transaction block and from a DO block:
#     each fails, and the worker is not asked to leave (before: it was
#     kicked out by commands that never ran);
#  2. ALTER DATABASE ... SET default_transaction_read_only = on: the worker
#     still serves the queue, no ERROR in the log (before: an ERROR at
#     every run);
#  3. ALTER DATABASE ... ALLOW_CONNECTIONS false: the launcher waits with
#     one LOG line, no FATAL (before: a FATAL every second or two), and the
#     worker serves again once connections are allowed;
#  4. a SIGHUP while the worker is busy with a long queue: its run ends
#     (stopped_because 'configuration reloaded') within seconds, settling
#     what is in flight, and the next run uses the new settings (before: the
#     run went on for up to a minute on the old ones); nothing is lost.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use AlipayplusTap;

my $tag = 'ww-' . int(time()) . "-$$";
my $order_no = 0;

my $node = PostgreSQL::Test::Cluster->new('world');
$node->init;
$node->append_conf('postgresql.conf',
	apc_conf()
	  . "alipayplus.database_name = 'wwdb'\n"
	  . "log_line_prefix = '%m [%p] %b '\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE ROLE wwowner LOGIN;
	CREATE DATABASE wwdb OWNER wwowner;
});
apc_shop($node, 'wwdb');

my $log_offset = 0;

sub log_since
{
	return slurp_file($node->logfile, $log_offset);
}

sub worker_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker'");
}

sub wait_worker
{
	my ($what) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker'"),
		$what);
	return;
}

# queue cancellations of new orders with request ids @ids, in one
# committed read-write transaction
sub queue
{
	my @ids = @_;
	my $sql = "BEGIN READ WRITE;\n";
	for my $id (@ids)
	{
		$order_no++;
		$sql .= "INSERT INTO shop.orders (order_no, payment_request_id) VALUES ($order_no, '$id');\n"
		  . "SELECT alipayplus_request_cancel(payment_request_id => '$id');\n";
	}
	$node->safe_psql('wwdb', $sql . "COMMIT;");
	return;
}

sub wait_cancelled
{
	my ($pattern, $n, $what) = @_;
	ok( $node->poll_query_until('wwdb',
			"SELECT count(*) = $n FROM shop.orders WHERE status = 'CANCELLED' AND payment_request_id LIKE '$pattern'"),
		$what);
	return;
}

wait_worker('the worker runs');
queue("$tag-first");
wait_cancelled("$tag-first", 1, 'it serves the queue');

# --- 1. commands that will not run do not kick the worker out
my $pid = worker_pid();
$log_offset = -s $node->logfile;
my ($ret, $out, $err) = $node->psql('postgres',
	'ALTER DATABASE wwdb RENAME TO wwdb_other', extra_params => [ '-U', 'wwowner' ]);
like($err, qr/permission denied to rename database/, 'RENAME by the owner without CREATEDB fails');
($ret, $out, $err) = $node->psql('postgres', "BEGIN; DROP DATABASE wwdb;");
like($err, qr/cannot run inside a transaction block/, 'DROP DATABASE in a transaction block fails');
($ret, $out, $err) = $node->psql('postgres', "DO \$\$ BEGIN EXECUTE 'DROP DATABASE wwdb'; END \$\$");
like($err, qr/cannot be executed from a function|cannot run inside a transaction block/,
	'DROP DATABASE from a DO block fails');
usleep(500_000);
unlike(log_since(), qr/asked to leave/, 'the worker was not asked to leave for any of them');
is(worker_pid(), $pid, 'the same worker runs on');

# --- 2. default_transaction_read_only = on in the database
$node->safe_psql('postgres', 'ALTER DATABASE wwdb SET default_transaction_read_only = on');
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker' AND pid <> $pid"),
	'a new worker starts in the read-only-by-default database');
queue("$tag-ro");
wait_cancelled("$tag-ro", 1, 'it serves the queue there');
unlike(log_since(), qr/ERROR:.*read-only transaction/, 'no read-only ERROR in the log');
like(log_since(), qr/alipayplus_cancel worker ignores default_transaction_read_only = on/,
	'the log says the worker ignores the setting');
$node->safe_psql('postgres', 'ALTER DATABASE wwdb RESET default_transaction_read_only');

# --- 3. ALLOW_CONNECTIONS false
$pid = worker_pid();
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER DATABASE wwdb ALLOW_CONNECTIONS false');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
usleep(6_000_000);
my $log = log_since();
unlike($log, qr/FATAL/, 'no FATAL in 6 s while the database does not allow connections');
my @said = ($log =~ /worker waits: database "wwdb" does not allow connections/g);
is(scalar(@said), 1, 'the launcher said once that it waits');
is(worker_pid(), '', 'no worker meanwhile');
$node->safe_psql('postgres', 'ALTER DATABASE wwdb ALLOW_CONNECTIONS true');
wait_worker('the worker starts once connections are allowed');
queue("$tag-again");
wait_cancelled("$tag-again", 1, 'and serves the queue');

# --- 4. SIGHUP during a long run: the run ends, the next one has the new settings
my @ids = map { "slow-1000-$tag-hup-$_" } 1 .. 20;
queue(@ids);
ok( $node->poll_query_until('wwdb',
		"SELECT count(*) > 0 FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'slow-1000-$tag-hup-%'"),
	'the worker is busy with 20 slow calls, 2 at a time');
my $t0 = time();
$node->safe_psql('postgres', 'ALTER SYSTEM SET alipayplus.max_concurrency = 10');
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok( $node->poll_query_until('wwdb',
		"SELECT count(*) > 0 FROM alipayplus.processor_runs
		 WHERE caller = 'alipayplus_cancel worker' AND stopped_because = 'configuration reloaded'"),
	'the run ends after the reload');
my $ended = time() - $t0;
cmp_ok($ended, '<', 5, "within 5 s of the reload ($ended s), not at the run's end");
wait_cancelled("slow-1000-$tag-hup-%", 20, 'all 20 cancelled');
my $max = 0;
{
	# the gateway's concurrency for them: the most requests in one 1 s window
	my @ts = sort { $a <=> $b } map {
		my $t = $_->{ts};
		$t =~ /T(\d+):(\d+):(\d+\.\d+)/;
		$1 * 3600 + $2 * 60 + $3
	} apc_gateway_requests("slow-1000-$tag-hup-");
	for my $i (0 .. $#ts)
	{
		my $n = grep { $_ >= $ts[$i] && $_ < $ts[$i] + 0.5 } @ts;
		$max = $n if $n > $max;
	}
	is(scalar(@ts), 20, 'one request each');
}
cmp_ok($max, '>', 2, "after the reload more than 2 calls at once ($max)");
is( $node->safe_psql('wwdb',
		"SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'slow-1000-$tag-hup-%'
		 AND result_code <> 'SUCCESS'"),
	'0', 'every call answered S, none cut by the reload');

ok($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel launcher'") eq '1',
	'the launcher runs');
unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'the postmaster never restarted');
$node->stop;
done_testing();
