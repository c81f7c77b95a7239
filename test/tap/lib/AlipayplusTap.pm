# AlipayplusTap: what the TAP tests under test/tap/t/ share.  They run
# under scripts/tap.sh, which points them at the rig's fake gateway and
# keys (ALIPAYPLUS_RIG, ALIPAYPLUS_TAP_CONF).
package AlipayplusTap;

use strict;
use warnings;
use Exporter 'import';
use JSON::PP;
use PostgreSQL::Test::Utils;

our @EXPORT = qw(apc_conf apc_shop apc_gateway_requests);

# postgresql.conf lines for a test cluster: the library preloaded and the
# alipayplus.* settings of the rig's gateway
sub apc_conf
{
	my $conf = $ENV{ALIPAYPLUS_TAP_CONF}
	  or die "ALIPAYPLUS_TAP_CONF is not set: run the test with scripts/tap.sh";
	return "shared_preload_libraries = 'alipayplus_cancel'\n"
	  . "alipayplus.max_concurrency = 2\n"
	  . slurp_file($conf);
}

# The extension and a bound orders table, shop.orders, in database $db
# (default postgres); with $partitioned, partitioned by order_no (below 100,
# from 100 on)
sub apc_shop
{
	my ($node, $db, $partitioned) = @_;
	my $table = $partitioned
	  ? q{CREATE TABLE shop.orders (
			order_no bigint PRIMARY KEY,
			payment_request_id text NOT NULL,
			status text NOT NULL DEFAULT 'PENDING',
			created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY RANGE (order_no);
		CREATE TABLE shop.orders_low PARTITION OF shop.orders FOR VALUES FROM (MINVALUE) TO (100);
		CREATE TABLE shop.orders_high PARTITION OF shop.orders FOR VALUES FROM (100) TO (MAXVALUE);}
	  : q{CREATE TABLE shop.orders (
			order_no bigint PRIMARY KEY,
			payment_request_id text NOT NULL UNIQUE,
			status text NOT NULL DEFAULT 'PENDING',
			created_at timestamptz NOT NULL DEFAULT now());};
	$node->safe_psql($db // 'postgres', qq{
		CREATE EXTENSION alipayplus_cancel;
		CREATE SCHEMA shop;
		$table
		SELECT alipayplus_bind_orders('shop.orders', 'payment_request_id', 'status',
			cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
			initiated_at_column => 'created_at',
			paid_value => 'PAID', failed_value => 'FAILED');
	});
	return;
}

# The requests the gateway logged whose id starts with $prefix, in order
sub apc_gateway_requests
{
	my ($prefix) = @_;
	my $log = "$ENV{ALIPAYPLUS_RIG}/gateway.jsonl";
	my @found;
	open(my $fh, '<', $log) or die "cannot read $log: $!";
	while (my $line = <$fh>)
	{
		next if index($line, $prefix) < 0;
		my $e = decode_json($line);
		push @found, $e
		  if defined $e->{id} && index($e->{id}, $prefix) == 0;
	}
	close($fh);
	return @found;
}

1;
