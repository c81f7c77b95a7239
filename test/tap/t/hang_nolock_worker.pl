# The background worker's call to a gateway that hangs holds nothing the
# application waits on (issue 14, item 4; test/hang_nolock.sh checks the
# same for the CALL form).  A cluster with the library preloaded and
# alipayplus.database_name set; a bound order whose cancellation the gateway
# does not answer in time ("slow-60000-...", alipayplus.timeout_ms = 8000).
# While the worker's call is in flight: an application UPDATE of another
# column of that order returns within 100 ms (clock_timestamp() inside its
# session, lock_timeout 3 s), alipayplus_apply_payment_result() for it does
# not wait, no session waits on the worker's backend (pg_blocking_pids), and
# the worker's backend_xmin and backend_xid are NULL.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);
use AlipayplusTap;

my $id = 'slow-60000-hangwk-' . int(time()) . "-$$";

my $node = PostgreSQL::Test::Cluster->new('hang_worker');
$node->init;
$node->append_conf('postgresql.conf',
	apc_conf()
	  . "alipayplus.database_name = 'postgres'\n"
	  . "alipayplus.timeout_ms = 8000\n");
$node->start;

# a build without issue 14's worker has no such setting: nothing to test
if ($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_settings WHERE name = 'alipayplus.database_name'") eq '0')
{
	$node->stop;
	plan skip_all => 'this build has no background worker (alipayplus.database_name)';
}

apc_shop($node);
$node->safe_psql('postgres', qq{
	ALTER TABLE shop.orders ADD COLUMN note text;
	INSERT INTO shop.orders (order_no, payment_request_id) VALUES (1, '$id');
	SELECT alipayplus_request_cancel(payment_request_id => '$id');
});

# the worker's call, once it has reached the gateway
my $until = time() + 60;
usleep(50_000) while scalar(apc_gateway_requests($id)) == 0 && time() < $until;
is(scalar(apc_gateway_requests($id)), 1, "the worker's request reached the gateway");
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker'");
like($pid, qr/^\d+$/, 'the worker runs');

sub xmin_sample
{
	return $node->safe_psql('postgres',
		"SELECT coalesce(backend_xmin::text, 'NULL') || '|' || coalesce(backend_xid::text, 'NULL')
		 FROM pg_stat_activity WHERE pid = $pid");
}

# $sql run with lock_timeout = 3s (a lock wait fails) and timed with
# clock_timestamp() inside its session; its last result is the time in ms
sub timed_sql
{
	my ($sql) = @_;
	return "SET lock_timeout = '3s'; DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN $sql; "
	  . "PERFORM set_config('audit.ms', round(extract(epoch FROM clock_timestamp() - t0)::numeric * 1000, 1)::text, false); "
	  . "END \$\$; SELECT current_setting('audit.ms')";
}

my @samples = (xmin_sample());
my $blocked = 0;
my ($upd_out, $upd_err) = ('', '');
my $upd = IPC::Run::start(
	[
		'psql', '-X', '-Atq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c',
		timed_sql("UPDATE shop.orders SET note = 'touched' WHERE payment_request_id = '$id'")
	],
	'<', \undef, '>', \$upd_out, '2>', \$upd_err);
for (1 .. 5)
{
	$blocked += $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE $pid = ANY (pg_catalog.pg_blocking_pids(pid))");
	push @samples, xmin_sample();
	usleep(100_000);
}
my $upd_ok = $upd->finish;
is($blocked, 0, "no session waits on the worker's backend while the UPDATE runs");
ok($upd_ok, "the application's UPDATE of another column succeeds") or note($upd_err);
chomp $upd_out;
ok($upd_out =~ /^\d+(\.\d+)?$/ && $upd_out < 100,
	"the application's UPDATE returned within 100 ms ($upd_out ms)");

my ($ret, $ms, $err) =
  $node->psql('postgres', timed_sql("PERFORM alipayplus_apply_payment_result('$id', 'U', 'UNKNOWN_EXCEPTION')"));
note($err) if $ret != 0;
is($ret, 0, 'alipayplus_apply_payment_result() for the order succeeds');
ok($ms =~ /^\d+(\.\d+)?$/ && $ms < 1000,
	"alipayplus_apply_payment_result() did not wait on the worker ($ms ms)");
push @samples, xmin_sample();

is(join(' ', grep { $_ ne 'NULL|NULL' } @samples), '',
	"the worker's backend holds no xmin and no xid during the hang (" . scalar(@samples) . ' samples)');
is( $node->safe_psql('postgres',
		"SELECT result_code FROM alipayplus.cancel_attempts WHERE sent_id = '$id'"),
	'local.no_answer_yet', 'the call was still in flight after the checks (its attempt has no answer yet)');
is(scalar(apc_gateway_requests($id)), 1, 'and the gateway had one request for it');

$node->stop;
done_testing();
