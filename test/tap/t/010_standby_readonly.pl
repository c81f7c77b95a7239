# A hot standby refuses every function that sends or queues a cancellation
# (issue 18.8) before anything else: SQLSTATE 25006, "cannot cancel
# Alipay+ payments in a read-only transaction", hint "Run on the primary.";
# an inquiry (issue 15) the same way, "cannot inquire about Alipay+
# payments in a read-only transaction";
# nothing reaches the gateway.  The same queue is then worked off on the
# primary.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AlipayplusTap;

my $tag = 'ro-standby-' . time() . "-$$";

my $primary = PostgreSQL::Test::Cluster->new('ro_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', apc_conf());
$primary->start;
apc_shop($primary);
$primary->safe_psql('postgres', qq{
	INSERT INTO shop.orders (order_no, payment_request_id) VALUES
		(1, '$tag-queued'), (2, '$tag-new');
	SELECT alipayplus_request_cancel(payment_request_id => '$tag-queued');
});
$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('ro_standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby, 'replay');
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

my %calls = (
	'alipayplus_cancel_payment, new payment' =>
	  "SELECT * FROM alipayplus_cancel_payment(payment_request_id => '$tag-new')",
	'alipayplus_cancel_payment, queued payment' =>
	  "SELECT * FROM alipayplus_cancel_payment(payment_request_id => '$tag-queued')",
	'alipayplus_request_cancel' =>
	  "SELECT * FROM alipayplus_request_cancel(payment_request_id => '$tag-new')",
	'alipayplus_request_cancel_all' =>
	  "SELECT * FROM alipayplus_request_cancel_all(ARRAY['$tag-new'])",
	'alipayplus_process_cancellations' =>
	  'SELECT * FROM alipayplus_process_cancellations()',
	'alipayplus_run_cancellations' => 'CALL alipayplus_run_cancellations()',
	'alipayplus_process_backlog' => 'CALL alipayplus_process_backlog()',
	'alipayplus._call_cancel' =>
	  "SELECT * FROM alipayplus._call_cancel(NULL, '$tag-direct')");
# an inquiry is recorded, so it is refused there too, in its own words (issue 15)
my %inquiries = (
	'alipayplus_inquire_payment' =>
	  "SELECT * FROM alipayplus_inquire_payment(payment_request_id => '$tag-new')",
	'alipayplus._call_inquiry' =>
	  "SELECT * FROM alipayplus._call_inquiry(NULL, '$tag-direct')");
for my $name (sort(keys %calls), sort(keys %inquiries))
{
	my $sql = $calls{$name} // $inquiries{$name};
	my $what = exists $calls{$name} ? 'cancel' : 'inquire about';
	my ($ret, $out, $err) =
	  $standby->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	isnt($ret, 0, "standby: $name fails");
	like($err,
		qr/ERROR:  25006: cannot \Q$what\E Alipay\+ payments in a read-only transaction\n/,
		"standby: $name refuses with 25006");
	like($err, qr/HINT:  Run on the primary\./, "standby: $name says to run on the primary");
}
is(scalar(apc_gateway_requests($tag)), 0, 'nothing was sent from the standby');

# the primary works the queue off
is( $primary->safe_psql('postgres',
		"SELECT claimed || '|' || cancelled FROM alipayplus_process_cancellations()"),
	'1|1', 'primary: the processor cancels the queued payment');
is( $primary->safe_psql('postgres',
		"SELECT state FROM alipayplus_cancel_payment(payment_request_id => '$tag-new')"),
	'CANCELLED', 'primary: the direct call cancels');
is(scalar(apc_gateway_requests($tag)), 2, 'two requests sent, both from the primary');

$standby->stop;
$primary->stop;
done_testing();
