# The background worker on a hot standby (issue 14, item 5): the standby
# has alipayplus.database_name set and replicates due cancellations, yet
# runs no worker and sends nothing; promoted, it starts the worker, which
# serves the queue at once, each payment sent once.  The primary runs no
# worker, so the queue waits for the standby.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use AlipayplusTap;

my $tag = 'wk-standby-' . int(time()) . "-$$";
my $N = 5;

sub sent
{
	my ($id) = @_;
	return scalar(grep { $_->{id} eq $id } apc_gateway_requests($id));
}

my $primary = PostgreSQL::Test::Cluster->new('wk_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', apc_conf());
$primary->start;
apc_shop($primary);
$primary->backup('bk');

my $standby = PostgreSQL::Test::Cluster->new('wk_standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->append_conf('postgresql.conf', "alipayplus.database_name = 'postgres'\nlog_line_prefix = '%m [%p] %b '\n");
$standby->start;

# the queue, committed on the primary (which has no worker), replicated
$primary->safe_psql('postgres', join('', map { qq{
	INSERT INTO shop.orders (order_no, payment_request_id) VALUES ($_, '$tag-$_');
	SELECT alipayplus_request_cancel(payment_request_id => '$tag-$_');
} } 1 .. $N));
$primary->wait_for_catchup($standby, 'replay');
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM alipayplus.cancellations WHERE state = 'CANCELLING' AND next_attempt_at <= now()"),
	$N, "the standby holds $N due cancellations");

# give a worker every chance to act (it would be woken at once)
sleep(3);
is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'alipayplus_cancel%'"),
	'0', 'no alipayplus_cancel launcher or worker runs on the standby');
is(scalar(apc_gateway_requests($tag)), 0, 'nothing was sent from the standby');

# promotion: the worker starts and serves the queue
$primary->stop;
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';
ok( $standby->poll_query_until('postgres',
		"SELECT count(*) = $N FROM shop.orders WHERE status = 'CANCELLED' AND payment_request_id LIKE '$tag-%'"),
	'promoted: the worker cancels the whole queue');
is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'alipayplus_cancel worker' AND datname = 'postgres'"),
	'1', 'promoted: the worker runs');
is(scalar(grep { sent("$tag-$_") == 1 } 1 .. $N), $N, 'each payment was sent exactly once');

$standby->stop;
my $log = slurp_file($standby->logfile);
unlike($log, qr/terminated by signal/, 'standby log: no crash');
unlike($log, qr/alipayplus_cancel \w+ (FATAL|ERROR)/, 'standby log: no FATAL or ERROR from the launcher or worker');
done_testing();
