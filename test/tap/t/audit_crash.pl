# kill -9 of the processor's backend while its calls are in flight (issues 16
# and 14, item 4): the postmaster restarts every backend, and nothing that
# left is missing from the record.
#
# 1. The committing processor (CALL alipayplus_run_cancellations) works 200
#    cancellations, 64 in flight, each answered S 1.5 s after it arrives; its
#    backend is killed (SIGKILL) half a second in, once the first 64
#    requests have reached the gateway.  After the restart, before and after
#    a rerun: the gateway's requests and alipayplus.cancel_attempts match id
#    by id; the 64 wait as 'local.no_answer_yet' until the next run, which
#    completes them as U local.crashed and marks the killed run 'ended
#    unfinished: ...'; every payment ends CANCELLED by exactly one S, with
#    the same parameters on every request; cancelled_at is the S answer's
#    time.
# 2. The lease: one cancellation whose first call hangs (the gateway answers
#    it after 2 s, "seq-W.S-..."; the retry is answered S at once).  While it
#    hangs, the row is leased (its next_attempt_at is ahead), its attempt is
#    on record, committed, as 'local.no_answer_yet', and a second processor
#    run sends nothing for it.  Then kill -9.  After the restart the attempt
#    is completed as U local.crashed, the payment is retried with the same
#    parameters and ends CANCELLED: two requests, two attempts, never a
#    request with other parameters.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);
use AlipayplusTap;

my $tag = 'auditcrash-' . time() . "-$$";
my $N = 200;
my $WIDTH = 64;

my $node = PostgreSQL::Test::Cluster->new('audit_crash');
$node->init;
# the framework turns restart_after_crash off: this test needs the restart
$node->append_conf('postgresql.conf', apc_conf() . "max_connections = 40\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION alipayplus_cancel');

# id => how many requests the gateway received for it (ids starting with $prefix)
sub gw_counts
{
	my ($prefix) = @_;
	my %n;
	$n{ $_->{id} }++ for apc_gateway_requests($prefix);
	return \%n;
}

# id => how many attempts are on record for it
sub db_counts
{
	my ($prefix) = @_;
	my %n;
	for my $line (split /\n/,
		$node->safe_psql('postgres',
			"SELECT sent_id || ' ' || count(*) FROM alipayplus.cancel_attempts
			 WHERE starts_with(sent_id, '$prefix') GROUP BY sent_id"))
	{
		my ($id, $c) = split / /, $line;
		$n{$id} = $c;
	}
	return \%n;
}

sub total { my $h = shift; my $s = 0; $s += $_ for values %$h; return $s; }

# the gateway's requests and the attempts on record match id by id
sub same_requests
{
	my ($name, $prefix) = @_;
	my ($g, $d) = (gw_counts($prefix), db_counts($prefix));
	is_deeply($d, $g,
		"$name: the gateway's requests (" . total($g) . ") = the attempts on record (" . total($d) . "), id by id");
}

# ids whose requests did not all carry the same id field and body
sub differing_params
{
	my ($prefix) = @_;
	my %seen;
	$seen{ $_->{id} }{ ($_->{id_field} // '') . "\n" . ($_->{body} // '') } = 1
	  for apc_gateway_requests($prefix);
	return join(' ', sort grep { keys %{ $seen{$_} } != 1 } keys %seen);
}

sub code_count
{
	my ($prefix, $code) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM alipayplus.cancel_attempts
		 WHERE starts_with(sent_id, '$prefix') AND result_code = '$code'");
}

# "stopped_because|finished" of the runs whose backend had that pid (read
# through to_jsonb: a table without the column gives no row, not an error)
sub run_of
{
	my ($pid) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(coalesce(p.stopped_because, '(null)') || '|' ||
			(p.finished_at IS NOT NULL), ' // ' ORDER BY p.run_id), '(no row)')
		 FROM alipayplus.processor_runs p WHERE to_jsonb(p)->>'pid' = '$pid'");
}

# the CALL in the background, marked with $mark
sub start_processor
{
	my ($mark, $out) = @_;
	return IPC::Run::start(
		[
			'psql', '-X', '-q', '-d', $node->connstr('postgres'),
			'-c', "SET alipayplus.max_concurrency = $WIDTH",
			'-c', "CALL alipayplus_run_cancellations(1000, '5 min') /* $mark */"
		],
		'<', \undef, '>', $out, '2>&1');
}

# the pid of the backend running the CALL marked $mark, once the gateway has
# received $count requests for $prefix (20 s at most)
sub backend_when_arrived
{
	my ($mark, $prefix, $count) = @_;
	my $deadline = time() + 20;
	my $pid = '';
	while (time() < $deadline)
	{
		$pid = $node->safe_psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE query LIKE '%/* $mark */%'
			 AND pid <> pg_backend_pid() LIMIT 1") if $pid eq '';
		return $pid
		  if $pid ne '' && scalar(apc_gateway_requests($prefix)) >= $count;
		usleep(20_000);
	}
	return $pid;
}

# the processor again until the ids' rows are settled (60 s at most)
sub rerun
{
	my ($prefix) = @_;
	my $deadline = time() + 60;
	while (time() < $deadline)
	{
		$node->psql('postgres',
			"SET alipayplus.max_concurrency = $WIDTH; CALL alipayplus_run_cancellations(1000, '1 min')");
		return 1
		  if $node->safe_psql('postgres',
			"SELECT count(*) FROM alipayplus.cancellations
			 WHERE state = 'CANCELLING' AND starts_with(sent_id, '$prefix')") eq '0';
		usleep(300_000);
	}
	return 0;
}

sub kill9_and_wait
{
	my ($pid, $h) = @_;
	kill 'KILL', $pid;
	$h->finish;
	# the postmaster restarts every backend; wait until it takes queries
	# again (psql without standard input: it may fail to connect meanwhile)
	my $deadline = time() + 120;
	my $up = 0;
	while (!$up && time() < $deadline)
	{
		my ($o, $e) = ('', '');
		IPC::Run::run([ 'psql', '-X', '-Atq', '-d', $node->connstr('postgres'), '-c', 'SELECT 1' ],
			'<', \undef, '>', \$o, '2>', \$e);
		$up = $o eq "1\n";
		usleep(200_000) unless $up;
	}
	ok($up, 'the cluster takes queries again after the kill -9');
}

# ---------------------------------------------------------------------------
# 1. 200 cancellations, 64 in flight, kill -9 half a second in
my $p = "slow-1500-$tag-k9-";
$node->safe_psql('postgres',
	"SELECT count(*) FROM generate_series(1, $N) i,
		alipayplus_request_cancel(payment_request_id => '$p' || i)");
my $out = '';
my $t0 = time();
my $h = start_processor('audit-k9', \$out);
my $pid = backend_when_arrived('audit-k9', $p, $WIDTH);
like($pid, qr/^\d+$/, 'kill9: the processor runs');
is(scalar(apc_gateway_requests($p)), $WIDTH, "kill9: the gateway received the first $WIDTH requests");
my $left = 0.5 - (time() - $t0);
usleep(int($left * 1_000_000)) if $left > 0;
kill9_and_wait($pid, $h);
note("kill9: the CALL's output: $out");

same_requests('kill9: before a rerun', $p);
my $s_before = code_count($p, 'SUCCESS');
my $waiting = code_count($p, 'local.no_answer_yet');
is($waiting + $s_before, $WIDTH,
	"kill9: before a rerun, the $WIDTH requests in flight are on record: answered S, or waiting as local.no_answer_yet");

ok(rerun($p), 'kill9: a rerun settles every row');
same_requests('kill9: after the rerun', $p);
is( $node->safe_psql('postgres',
		"SELECT count(*) || '|' || count(*) FILTER (WHERE state = 'CANCELLED') || '|' ||
			count(*) FILTER (WHERE needs_attention) || '|' ||
			count(*) FILTER (WHERE (SELECT count(*) FROM alipayplus.cancel_attempts a
				WHERE a.cancellation_id = c.cancellation_id AND a.result_status = 'S') = 1)
		 FROM alipayplus.cancellations c WHERE starts_with(sent_id, '$p')"),
	"$N|$N|0|$N", 'kill9: every payment CANCELLED, each by exactly one S attempt, nothing flagged');
is(code_count($p, 'local.crashed'), $WIDTH - $s_before,
	'kill9: the calls left without an answer are completed as U local.crashed');
is( $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE result_code = 'local.no_answer_yet') || '|' ||
			count(*) FILTER (WHERE to_jsonb(a)->>'completed_at' IS NULL) || '|' ||
			count(*) FILTER (WHERE result_status NOT IN ('S', 'U') OR (result_status = 'U' AND result_code <> 'local.crashed'))
		 FROM alipayplus.cancel_attempts a WHERE starts_with(sent_id, '$p')"),
	'0|0|0', 'kill9: no attempt is left without an answer, and no other kind of attempt');
like(run_of($pid), qr/^ended unfinished: .*\|true$/,
	"kill9: processor_runs shows the killed run as ended unfinished");
is(differing_params($p), '', 'kill9: the same parameters (id field and body) on every request of a payment');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM alipayplus.cancellations c
		 JOIN alipayplus.cancel_attempts a ON a.cancellation_id = c.cancellation_id AND a.result_status = 'S'
		 WHERE starts_with(c.sent_id, '$p')
			AND (to_jsonb(a)->>'completed_at' IS NULL
				 OR c.cancelled_at < (to_jsonb(a)->>'completed_at')::timestamptz
				 OR c.cancelled_at < a.attempted_at + interval '1.4 seconds')"),
	'0', 'kill9: cancelled_at is the S answer\'s time (>= its attempt\'s completed_at and attempted_at + 1.4 s)');

# ---------------------------------------------------------------------------
# 2. the lease: kill -9 between claim and settle, a hanging call
my $id = "seq-W.S-$tag-lease";
$node->safe_psql('postgres',
	"UPDATE alipayplus.cancellations SET next_attempt_at = now() + interval '1 day'
	 WHERE state = 'CANCELLING' AND NOT needs_attention;
	 SELECT alipayplus_request_cancel(payment_request_id => '$id')");
$out = '';
$h = start_processor('audit-lease', \$out);
$pid = backend_when_arrived('audit-lease', $id, 1);
like($pid, qr/^\d+$/, 'lease: the processor runs, its call in flight');
is( $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE result_code = 'local.no_answer_yet') || '|' || count(*)
		 FROM alipayplus.cancel_attempts WHERE sent_id = '$id'"),
	'1|1', 'lease: while the call hangs, its attempt is on record, committed, with no answer yet');
is( $node->safe_psql('postgres',
		"SELECT next_attempt_at > clock_timestamp() FROM alipayplus.cancellations WHERE sent_id = '$id'"),
	't', 'lease: while the call hangs, the row is leased (next_attempt_at ahead)');
$node->psql('postgres', "CALL alipayplus_run_cancellations(10, '5 seconds')");
is(scalar(apc_gateway_requests($id)), 1, 'lease: a second processor run meanwhile sends nothing for it');
kill9_and_wait($pid, $h);
note("lease: the CALL's output: $out");
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM alipayplus.cancel_attempts WHERE sent_id = '$id'"),
	'1', 'lease: after the restart, the request that left is on record');

my $deadline = time() + 60;
my $state = '';
while (time() < $deadline)
{
	$node->psql('postgres', "CALL alipayplus_run_cancellations(10, '10 seconds')");
	$state = $node->safe_psql('postgres', "SELECT state FROM alipayplus.cancellations WHERE sent_id = '$id'");
	last if $state eq 'CANCELLED';
	usleep(200_000);
}
is($state, 'CANCELLED', 'lease: the payment is retried and ends CANCELLED');
is( $node->safe_psql('postgres',
		"SELECT string_agg(result_status || ' ' || result_code || ' ' || (to_jsonb(a)->>'completed_at' IS NOT NULL), ', '
			ORDER BY attempt_id)
		 FROM alipayplus.cancel_attempts a WHERE sent_id = '$id'"),
	'U local.crashed true, S SUCCESS true',
	'lease: the crashed attempt is completed as U local.crashed, the retry answered S');
same_requests('lease', $id);
is(differing_params($id), '', 'lease: the retry sent the same parameters (id field and body)');
like(run_of($pid), qr/^ended unfinished: .*\|true$/, 'lease: the killed run reads ended unfinished');

$node->stop;
done_testing();
