# Failover mid-backlog (issue 18.4).  A primary with the extension and a
# bound orders table works through a backlog of cancellations against the
# rig's fake gateway; a test client records every order it sees CANCELLED
# on the primary; the standby goes away, the primary is stopped with -m
# immediate, the standby is promoted and finishes the backlog.
#
# With a synchronous standby (synchronous_standby_names, the processor's
# role at synchronous_commit = remote_apply) nothing the client saw is lost,
# the window whose commit was waiting for the standby is sent again, and
# every payment ends CANCELLED once.  With an asynchronous standby, rows
# the client saw CANCELLED come back as CANCELLING (the risk the README's
# "High availability" section describes) and are sent again with the same
# parameters.  The processor warns when its session's synchronous_commit
# does not match the set-up, also at synchronous_commit = on while the
# standby is asynchronous.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use AlipayplusTap;

my $N = 40;

sub cancelled_now
{
	my ($node, $pfx) = @_;
	return split /\n/, $node->safe_psql('postgres',
		"SELECT payment_request_id FROM shop.orders WHERE status = 'CANCELLED' AND payment_request_id LIKE '$pfx%'");
}

sub scenario
{
	my ($mode) = @_;
	my $sync = $mode eq 'sync';

	my $primary = PostgreSQL::Test::Cluster->new("primary_$mode");
	$primary->init(allows_streaming => 1);
	$primary->append_conf('postgresql.conf', apc_conf());
	$primary->start;
	apc_shop($primary);
	$primary->backup('bk');
	my $standby = PostgreSQL::Test::Cluster->new("standby_$mode");
	$standby->init_from_backup($primary, 'bk', has_streaming => 1);
	$standby->start;

	my ($ret, $out, $err);
	if ($sync)
	{
		$primary->safe_psql('postgres', qq{
			ALTER SYSTEM SET synchronous_standby_names = 'standby_$mode';
			SELECT pg_reload_conf();
			ALTER ROLE postgres SET synchronous_commit = remote_apply;
		});
		$primary->poll_query_until('postgres',
			"SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'standby_$mode'")
		  or die "the standby did not become synchronous";
		($ret, $out, $err) = $primary->psql('postgres',
			'SET synchronous_commit = local; SELECT claimed FROM alipayplus_process_cancellations(1)');
		like($err, qr/WARNING:  synchronous_commit is local although synchronous_standby_names is set/,
			'sync: the processor warns at synchronous_commit = local');
		($ret, $out, $err) = $primary->psql('postgres',
			"SET synchronous_commit = local; BEGIN; SELECT alipayplus_request_cancel(payment_request_id => 'tap-no-such-order'); ROLLBACK");
		like($err, qr/WARNING:  synchronous_commit is local although synchronous_standby_names is set/,
			'sync: a cancel request warns at synchronous_commit = local');
		($ret, $out, $err) = $primary->psql('postgres',
			'SET synchronous_commit = remote_write; SELECT claimed FROM alipayplus_process_cancellations(1)');
		like($err, qr/WARNING:  synchronous_commit is remote_write although synchronous_standby_names is set/,
			'sync: the processor warns at synchronous_commit = remote_write');
		($ret, $out, $err) = $primary->psql('postgres',
			'SELECT claimed FROM alipayplus_process_cancellations(1)');
		unlike($err, qr/WARNING/, 'sync: no warning at remote_apply');
	}
	else
	{
		($ret, $out, $err) = $primary->psql('postgres',
			'SET synchronous_commit = off; SELECT claimed FROM alipayplus_process_cancellations(1)');
		like($err, qr/WARNING:  synchronous_commit is off/,
			'async: the processor warns at synchronous_commit = off');
		($ret, $out, $err) = $primary->psql('postgres',
			"SET synchronous_commit = off; BEGIN; SELECT alipayplus_request_cancel(payment_request_id => 'tap-no-such-order'); ROLLBACK");
		like($err, qr/WARNING:  synchronous_commit is off/,
			'async: a cancel request warns at synchronous_commit = off');
		# the main failover case: on, but the standby is asynchronous
		$primary->poll_query_until('postgres',
			"SELECT state = 'streaming' FROM pg_stat_replication WHERE application_name = 'standby_$mode'")
		  or die "the standby did not stream";
		($ret, $out, $err) = $primary->psql('postgres',
			'SELECT claimed FROM alipayplus_process_cancellations(1)');
		like($err, qr/WARNING:  this server streams its WAL asynchronously/,
			'async: the processor warns at synchronous_commit = on with an asynchronous standby');
		($ret, $out, $err) = $primary->psql('postgres',
			"BEGIN; SELECT alipayplus_request_cancel(payment_request_id => 'tap-no-such-order'); ROLLBACK");
		like($err, qr/WARNING:  this server streams its WAL asynchronously/,
			'async: a cancel request warns with an asynchronous standby');
	}

	# the backlog: every call takes 400 ms at the gateway, two at a time
	my $pfx = "slow-400-TAPFO-$mode-$$-";
	$primary->safe_psql('postgres', qq{
		INSERT INTO shop.orders (order_no, payment_request_id)
			SELECT n, '$pfx' || n FROM generate_series(1, $N) n;
		SELECT count(*) FROM alipayplus_request_cancel_all(
			ARRAY(SELECT payment_request_id FROM shop.orders ORDER BY order_no));
	});
	$primary->wait_for_catchup($standby, 'replay');

	my ($pout, $perr) = ('', '');
	my $proc = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $primary->connstr('postgres'),
		  '-c', "CALL alipayplus_process_backlog(progress => NULL)" ],
		'>', \$pout, '2>', \$perr);

	my %acked;
	my $record = sub { $acked{$_} = 1 for cancelled_now($primary, $pfx); };
	for (1 .. 1200)
	{
		$record->();
		last if keys %acked >= 10;
		usleep(50_000);
	}
	cmp_ok(scalar(keys %acked), '<', $N, "$mode: stopped mid-backlog");

	# the standby goes away mid-run
	$standby->stop('fast');
	my $at_stop = keys %acked;
	if ($sync)
	{
		# the processor's next commit waits for the standby: not acknowledged
		$primary->poll_query_until('postgres',
			"SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
		  or die "the processor did not wait for the standby";
		$record->() for 1 .. 5;
	}
	else
	{
		for (1 .. 1200)
		{
			$record->();
			last if keys %acked >= $at_stop + 6 || keys %acked == $N;
			usleep(50_000);
		}
	}
	$primary->stop('immediate');
	$proc->finish;
	my $acked = keys %acked;
	note("$mode: $at_stop orders seen CANCELLED when the standby stopped, $acked when the primary stopped");

	$standby->start;
	$standby->promote;
	$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
	  or die "the standby was not promoted";
	my %kept = map { $_ => 1 } cancelled_now($standby, $pfx);
	my @lost = sort grep { !$kept{$_} } keys %acked;
	if ($sync)
	{
		is(scalar(@lost), 0, 'sync: every order seen CANCELLED on the old primary is CANCELLED on the new one')
		  or diag("lost: @lost");
	}
	else
	{
		cmp_ok(scalar(@lost), '>', 0,
			'async: orders seen CANCELLED on the old primary are back to CANCELLING on the new one');
		is($standby->safe_psql('postgres',
			"SELECT count(*) FROM shop.orders WHERE status = 'CANCELLING' AND payment_request_id IN ('"
			  . join("','", @lost) . "')"),
			scalar(@lost), 'async: the lost ones are queued again');
	}

	# the new primary finishes the backlog
	$standby->safe_psql('postgres', 'CALL alipayplus_process_backlog(progress => NULL)');
	is($standby->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE status = 'CANCELLED') || '/' || count(*) FROM shop.orders WHERE payment_request_id LIKE '$pfx%'"),
		"$N/$N", "$mode: every order CANCELLED on the new primary");
	is($standby->safe_psql('postgres', qq{
		SELECT count(*) || ' ' || count(DISTINCT sent_id) || ' ' || count(*) FILTER (WHERE state = 'CANCELLED')
		FROM alipayplus.cancellations WHERE sent_id LIKE '$pfx%'}),
		"$N $N $N", "$mode: one CANCELLED ledger row per payment");

	# Alipay+ saw each payment's cancellation, re-sent ones with the same body
	my (%bodies, %sent);
	for my $e (apc_gateway_requests($pfx))
	{
		$bodies{ $e->{id} }{ $e->{body} } = 1;
		$sent{ $e->{id} }++;
	}
	is(scalar(keys %sent), $N, "$mode: the gateway saw every payment");
	my @differ = grep { keys %{ $bodies{$_} } != 1 } keys %bodies;
	is(scalar(@differ), 0, "$mode: a payment sent again is sent with the same parameters")
	  or diag("@differ");
	my @again = grep { $sent{$_} > 1 } keys %sent;
	cmp_ok(scalar(@again), '>', 0, "$mode: some payments were sent again after the failover");
	if (!$sync)
	{
		my @lost_again = grep { $sent{$_} > 1 } @lost;
		is(scalar(@lost_again), scalar(@lost), 'async: every lost CANCELLED was sent again');
	}
	note("$mode: " . scalar(@again) . " payments sent more than once");

	$standby->stop;
	return;
}

scenario('sync');
scenario('async');
done_testing();
