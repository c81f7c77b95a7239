# Logical replication of a bound orders table (issue 18.5): a subscriber
# whose orders table is bound too takes the publisher's CANCELLING and
# CANCELLED rows, in the initial copy and as updates, and its guard still
# refuses every local write that would undo or fake a cancellation, also
# a write made by a trigger running inside the replication worker.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use AlipayplusTap;

my $pub = PostgreSQL::Test::Cluster->new('publisher');
$pub->init(allows_streaming => 'logical');
$pub->append_conf('postgresql.conf', apc_conf());
$pub->start;

my $sub = PostgreSQL::Test::Cluster->new('subscriber');
$sub->init;
$sub->append_conf('postgresql.conf', apc_conf() . "wal_retrieve_retry_interval = '500ms'\n");
$sub->start;

apc_shop($pub);
apc_shop($sub);

# ids unique to this run in the gateway's shared log
my $p = "PR_TAPLR_$$";

sub statuses
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		"SELECT string_agg(order_no || '=' || status, ',' ORDER BY order_no) FROM shop.orders");
}

# Wait until the subscriber's table is synchronized and caught up, or its
# log shows the replication worker failing; true when in sync.
sub in_sync
{
	my ($from, $db) = @_;
	$db //= 'postgres';
	for (1 .. 600)
	{
		my $ready = $sub->safe_psql($db,
			"SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')");
		if ($ready eq 't' && statuses($pub, $db) eq statuses($sub, $db))
		{
			return 1;
		}
		my $log = substr(slurp_file($sub->logfile), $from);
		return 0 if $log =~ /ERROR:  cannot (insert|set|change)/ && $_ > 50;
		usleep(100_000);
	}
	return 0;
}

# Wait until the subscriber's log, from byte $from on, matches $re
sub log_shows
{
	my ($re, $from) = @_;
	for (1 .. 600)
	{
		return 1 if substr(slurp_file($sub->logfile), $from) =~ $re;
		usleep(100_000);
	}
	return 0;
}

# Wait until the subscriber's log, from byte $from on, shows the guard
# refusing a replicated cancel state with a message part matching $re
sub refused
{
	my ($re, $from) = @_;
	return log_shows(
		qr/ERROR:  trigger "alipayplus_guard_order" on table "orders" cannot accept a replicated cancellation state\n(.*\n)*?.*$re/,
		$from);
}

# On the publisher in $db: orders $first..$last (ids $pfx || n), those in
# @$cancelled cancelled, then $cancelling's cancellation requested
sub publisher_orders
{
	my ($db, $pfx, $first, $last, $cancelled, $cancelling) = @_;
	my $request = sub {
		"SELECT alipayplus_request_cancel(payment_request_id => '$pfx$_[0]');";
	};
	$pub->safe_psql($db,
		"INSERT INTO shop.orders (order_no, payment_request_id)
			SELECT n, '$pfx' || n FROM generate_series($first, $last) n;"
		  . join('', map { $request->($_) } @$cancelled)
		  . 'CALL alipayplus_run_cancellations();'
		  . $request->($cancelling));
	return;
}

# On the publisher: two orders cancelled, one cancelling, three untouched
publisher_orders('postgres', "${p}_", 1, 6, [ 1, 2 ], 3);
is(statuses($pub), '1=CANCELLED,2=CANCELLED,3=CANCELLING,4=PENDING,5=PENDING,6=PENDING',
	'publisher: two orders cancelled, one cancelling');

my $connstr = $pub->connstr . ' dbname=postgres';
$pub->safe_psql('postgres', 'CREATE PUBLICATION orders_pub FOR TABLE shop.orders');
my $logpos = -s $sub->logfile;
$sub->safe_psql('postgres',
	"CREATE SUBSCRIPTION orders_sub CONNECTION '$connstr' PUBLICATION orders_pub");

ok(in_sync($logpos), 'initial copy of CANCELLED and CANCELLING rows does not stall')
  or diag(substr(slurp_file($sub->logfile), $logpos));
is(statuses($sub), statuses($pub), 'subscriber has the publisher\'s rows after the copy');

# Updates into both cancel states, replicated as they happen
$logpos = -s $sub->logfile;
$pub->safe_psql('postgres',
	"SELECT alipayplus_request_cancel(payment_request_id => '${p}_4')");
ok(in_sync($logpos), 'update to CANCELLING is replicated');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 4'),
	'CANCELLING', 'subscriber: order 4 CANCELLING');
$pub->safe_psql('postgres', 'CALL alipayplus_run_cancellations()');
ok(in_sync($logpos), 'updates to CANCELLED are replicated');
is(statuses($sub), '1=CANCELLED,2=CANCELLED,3=CANCELLED,4=CANCELLED,5=PENDING,6=PENDING',
	'subscriber: the four orders CANCELLED');

# The subscriber's own sessions are guarded as before
my ($ret, $out, $err) = $sub->psql('postgres',
	"UPDATE shop.orders SET status = 'PAID' WHERE order_no = 1");
like($err, qr/cannot change status of row \(order_no\)=\(1\).*from "CANCELLED" to "PAID"/,
	'subscriber: a local update out of CANCELLED is refused');
($ret, $out, $err) = $sub->psql('postgres', 'DELETE FROM shop.orders WHERE order_no = 2');
like($err, qr/cannot delete row \(order_no\)=\(2\)/, 'subscriber: a cancelled order cannot be deleted');
($ret, $out, $err) = $sub->psql('postgres',
	"UPDATE shop.orders SET status = 'CANCELLED' WHERE order_no = 5");
like($err, qr/Alipay\+ has not confirmed the cancellation/,
	'subscriber: a local update to CANCELLED without the ledger is refused');
($ret, $out, $err) = $sub->psql('postgres',
	"UPDATE shop.orders SET status = 'CANCELLING' WHERE order_no = 5");
like($err, qr/to "CANCELLING" directly/,
	'subscriber: a local update to CANCELLING without the ledger is refused');
($ret, $out, $err) = $sub->psql('postgres',
	"SET session_replication_role = replica; UPDATE shop.orders SET status = 'CANCELLED' WHERE order_no = 5");
like($err, qr/Alipay\+ has not confirmed the cancellation/,
	'subscriber: session_replication_role = replica does not make a session a replication worker');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 5'),
	'PENDING', 'subscriber: order 5 still PENDING');

# Code running inside the replication worker is not the replicated change:
# an owner's trigger that fires there and cancels another order is refused
$sub->safe_psql('postgres', q{
	CREATE FUNCTION shop.cancel_other() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE shop.orders SET status = 'CANCELLED' WHERE order_no = 6;
		RETURN NULL;
	END $$;
	CREATE TRIGGER cancel_other AFTER INSERT ON shop.orders
		FOR EACH ROW EXECUTE FUNCTION shop.cancel_other();
	ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER cancel_other;
});
$logpos = -s $sub->logfile;
$pub->safe_psql('postgres',
	"INSERT INTO shop.orders (order_no, payment_request_id) VALUES (7, '${p}_7')");
ok(log_shows(qr/ERROR:  cannot set status of row \(order_no\)=\(6\).*Alipay\+ has not confirmed/, $logpos),
	'subscriber: a trigger in the replication worker cannot cancel another order');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 6'),
	'PENDING', 'subscriber: order 6 still PENDING');
$sub->safe_psql('postgres', 'DROP TRIGGER cancel_other ON shop.orders');
ok(in_sync(-s $sub->logfile), 'replication resumes once the trigger is gone');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 7'),
	'PENDING', 'subscriber: order 7 arrived');

# A BEFORE trigger that fires in the replication worker could change the
# row on its way in: with one on the table, no replicated row enters a
# cancel state (here it would forge one), until it fires for local changes only
$sub->safe_psql('postgres', q{
	CREATE FUNCTION shop.forge() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.order_no = 8 THEN
			NEW.status := 'CANCELLED';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER forge BEFORE INSERT OR UPDATE ON shop.orders
		FOR EACH ROW EXECUTE FUNCTION shop.forge();
	ALTER TABLE shop.orders ENABLE REPLICA TRIGGER forge;
});
$logpos = -s $sub->logfile;
$pub->safe_psql('postgres',
	"INSERT INTO shop.orders (order_no, payment_request_id) VALUES (8, '${p}_8')");
ok(refused(qr/DETAIL:  Trigger "forge" fires in the replication worker/, $logpos),
	'subscriber: a BEFORE trigger in the replication worker cannot forge a cancellation');
is($sub->safe_psql('postgres', 'SELECT count(*) FROM shop.orders WHERE order_no = 8'),
	'0', 'subscriber: order 8 not written');
$sub->safe_psql('postgres', 'ALTER TABLE shop.orders ENABLE TRIGGER forge');
ok(in_sync(-s $sub->logfile), 'replication resumes once the trigger fires for local changes only');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 8'),
	'PENDING', 'subscriber: order 8 arrived PENDING');
$sub->safe_psql('postgres', 'DROP TRIGGER forge ON shop.orders');

# Without the preloaded library the guard cannot tell the worker's own
# changes from nested ones: the subscription stops with a clear error and
# resumes once the library is preloaded
$sub->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$sub->restart;
$logpos = -s $sub->logfile;
$pub->safe_psql('postgres',
	"SELECT alipayplus_request_cancel(payment_request_id => '${p}_5')");
ok(refused(qr/HINT:  Add alipayplus_cancel to shared_preload_libraries on the subscriber/, $logpos),
	'subscriber without the preloaded library: a clear error');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 5'),
	'PENDING', 'subscriber without the preloaded library: order 5 not changed');
$sub->append_conf('postgresql.conf', "shared_preload_libraries = 'alipayplus_cancel'\n");
$sub->restart;
ok(in_sync(-s $sub->logfile), 'replication resumes with the library preloaded');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 5'),
	'CANCELLING', 'subscriber: order 5 CANCELLING');

# Any owner's trigger that fires in the replication worker runs there as
# the subscription's owner (a superuser): with one on the table, even one
# that changes nothing, no replicated row enters a cancel state
$sub->safe_psql('postgres', q{
	CREATE FUNCTION shop.watch() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		RETURN NULL;
	END $$;
	CREATE TRIGGER watch AFTER UPDATE ON shop.orders
		FOR EACH ROW EXECUTE FUNCTION shop.watch();
	ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER watch;
});
$logpos = -s $sub->logfile;
$pub->safe_psql('postgres',
	"SELECT alipayplus_request_cancel(payment_request_id => '${p}_6')");
ok(refused(qr/DETAIL:  Trigger "watch" fires in the replication worker(.*\n)*?.*HINT:  Let that trigger fire only for local changes on the subscriber \(ALTER TABLE orders ENABLE TRIGGER watch\)/, $logpos),
	'subscriber: any trigger that fires in the replication worker stops a replicated cancel state');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 6'),
	'PENDING', 'subscriber: order 6 not changed');
$sub->safe_psql('postgres', 'ALTER TABLE shop.orders ENABLE TRIGGER watch');
ok(in_sync(-s $sub->logfile), 'replication resumes once the trigger fires for local changes only');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 6'),
	'CANCELLING', 'subscriber: order 6 CANCELLING');
$sub->safe_psql('postgres', 'DROP TRIGGER watch ON shop.orders');

# A BEFORE trigger forges the state and an AFTER trigger that fires before
# the guard drops both: the catalog looks clean when the guard checks, but
# code ran in the worker, so the state is refused
$sub->safe_psql('postgres', q{
	CREATE FUNCTION shop.forge_all() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		NEW.status := 'CANCELLED';
		RETURN NEW;
	END $$;
	CREATE FUNCTION shop.hide() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		DROP TRIGGER forge ON shop.orders;
		DROP TRIGGER a0_hide ON shop.orders;
		RETURN NULL;
	END $$;
	CREATE TRIGGER forge BEFORE INSERT ON shop.orders
		FOR EACH ROW EXECUTE FUNCTION shop.forge_all();
	ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER forge;
	CREATE TRIGGER a0_hide AFTER INSERT ON shop.orders
		FOR EACH ROW EXECUTE FUNCTION shop.hide();
	ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER a0_hide;
});
$logpos = -s $sub->logfile;
$pub->safe_psql('postgres',
	"INSERT INTO shop.orders (order_no, payment_request_id) VALUES (9, '${p}_9')");
ok(refused(qr/DETAIL:  A trigger, foreign key action or function ran queries or commands inside the replication worker/, $logpos),
	'subscriber: a trigger that drops the forging trigger before the guard looks cannot bring a cancellation');
is($sub->safe_psql('postgres', 'SELECT count(*) FROM shop.orders WHERE order_no = 9'),
	'0', 'subscriber: order 9 not written');
$sub->safe_psql('postgres', 'DROP TRIGGER IF EXISTS a0_hide ON shop.orders; DROP TRIGGER IF EXISTS forge ON shop.orders');
ok(in_sync(-s $sub->logfile), 'replication resumes once the triggers are gone');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 9'),
	'PENDING', 'subscriber: order 9 arrived PENDING');

# A foreign key action that fires in the worker (ON UPDATE CASCADE from a
# replicated lookup table, its trigger enabled ALWAYS) changes the order
# inside the worker: it is not the publisher's change
for my $node ($pub, $sub)
{
	$node->safe_psql('postgres', 'CREATE DATABASE fk');
	apc_shop($node, 'fk');
	$node->safe_psql('fk', q{
		CREATE TABLE shop.codes (code text PRIMARY KEY);
		INSERT INTO shop.codes VALUES ('PENDING'), ('X');});
}
$pub->safe_psql('fk', 'CREATE PUBLICATION codes_pub FOR TABLE shop.codes');
$sub->safe_psql('fk', q{
	INSERT INTO shop.orders (order_no, payment_request_id, status) VALUES (50, 'fk50', 'X');
	ALTER TABLE shop.orders ADD CONSTRAINT status_fk FOREIGN KEY (status)
		REFERENCES shop.codes (code) ON UPDATE CASCADE;
	DO $$
	DECLARE t name;
	BEGIN
		FOR t IN SELECT tgname FROM pg_trigger
			WHERE tgrelid = 'shop.codes'::regclass AND tgisinternal
				AND tgfoid = 'pg_catalog."RI_FKey_cascade_upd"'::regproc
		LOOP
			EXECUTE format('ALTER TABLE shop.codes ENABLE ALWAYS TRIGGER %I', t);
		END LOOP;
	END $$;
});
$sub->safe_psql('fk',
	"CREATE SUBSCRIPTION codes_sub CONNECTION '" . $pub->connstr . " dbname=fk' PUBLICATION codes_pub WITH (copy_data = false)");
$sub->poll_query_until('fk',
	"SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')")
  or die 'codes_sub did not become ready';
$logpos = -s $sub->logfile;
$pub->safe_psql('fk', "UPDATE shop.codes SET code = 'CANCELLED' WHERE code = 'X'");
ok(refused(qr/DETAIL:  A trigger, foreign key action or function ran/, $logpos),
	'subscriber: a cascading foreign key action in the worker cannot cancel an order');
is($sub->safe_psql('fk', 'SELECT status FROM shop.orders WHERE order_no = 50'),
	'X', 'subscriber: order 50 not cancelled');
$sub->safe_psql('fk', 'DROP SUBSCRIPTION codes_sub');

# A default of the status column on the subscriber fills it when the
# publication leaves the column out: it must not bring a cancel state
for my $node ($pub, $sub)
{
	$node->safe_psql('postgres', 'CREATE DATABASE cols');
	apc_shop($node, 'cols');
}
$pub->safe_psql('cols',
	'CREATE PUBLICATION cols_pub FOR TABLE shop.orders (order_no, payment_request_id, created_at)');
$sub->safe_psql('cols', "ALTER TABLE shop.orders ALTER status SET DEFAULT 'CANCELLED'");
$logpos = -s $sub->logfile;
$sub->safe_psql('cols',
	"CREATE SUBSCRIPTION cols_sub CONNECTION '" . $pub->connstr . " dbname=cols' PUBLICATION cols_pub");
$pub->safe_psql('cols',
	"INSERT INTO shop.orders (order_no, payment_request_id) VALUES (1, '${p}_cols_1')");
ok(refused(qr/DETAIL:  Column status has a default/, $logpos),
	'subscriber: a default of the status column cannot supply a cancellation');
is($sub->safe_psql('cols', 'SELECT count(*) FROM shop.orders'), '0',
	'subscriber: no order arrived CANCELLED');
$sub->safe_psql('cols', "ALTER TABLE shop.orders ALTER status SET DEFAULT 'PENDING'");
ok(in_sync(-s $sub->logfile, 'cols'), 'replication resumes with a constant initial status as default');
is(statuses($sub, 'cols'), '1=PENDING', 'subscriber: order 1 arrived PENDING');
$sub->safe_psql('cols', 'DROP SUBSCRIPTION cols_sub');

# A partitioned bound table, published through its root: the subscriber
# routes the rows to its partitions, whose cloned guards let them in
for my $node ($pub, $sub)
{
	$node->safe_psql('postgres', 'CREATE DATABASE parts');
	apc_shop($node, 'parts', 1);
}
publisher_orders('parts', "${p}_parts_", 99, 101, [ 99, 101 ], 100);
$pub->safe_psql('parts',
	'CREATE PUBLICATION parts_pub FOR TABLE shop.orders WITH (publish_via_partition_root = true)');
$sub->safe_psql('parts',
	"CREATE SUBSCRIPTION parts_sub CONNECTION '" . $pub->connstr . " dbname=parts' PUBLICATION parts_pub");
ok(in_sync(-s $sub->logfile, 'parts'), 'partitioned table: the initial copy does not stall');
is(statuses($sub, 'parts'), '99=CANCELLED,100=CANCELLING,101=CANCELLED',
	'partitioned table: the subscriber has the cancel states, in both partitions');
$pub->safe_psql('parts', 'CALL alipayplus_run_cancellations()');
ok(in_sync(-s $sub->logfile, 'parts'), 'partitioned table: the update to CANCELLED is replicated');
($ret, $out, $err) = $sub->psql('parts',
	"UPDATE shop.orders SET status = 'PAID' WHERE order_no = 101");
like($err, qr/cannot change status of row \(order_no\)=\(101\).*from "CANCELLED" to "PAID"/,
	'partitioned table: a local update out of CANCELLED on the subscriber is refused');
$sub->safe_psql('parts', 'DROP SUBSCRIPTION parts_sub');

# A publisher whose guard was disabled cannot undo a cancellation on the
# subscriber: the replicated change is refused (and the subscription waits)
$logpos = -s $sub->logfile;
# (a superuser with check_function_bodies off, as a restore runs: the event
# trigger then does not put the guard back at once)
$pub->safe_psql('postgres', q{
	SET check_function_bodies = off;
	ALTER TABLE shop.orders DISABLE TRIGGER alipayplus_guard_order;
	UPDATE shop.orders SET status = 'PAID' WHERE order_no = 1;
	ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER alipayplus_guard_order;
});
ok(log_shows(qr/ERROR:  cannot change status of row \(order_no\)=\(1\) of table "orders" from "CANCELLED" to "PAID"/, $logpos),
	'subscriber: a replicated change out of CANCELLED is refused');
is($sub->safe_psql('postgres', 'SELECT status FROM shop.orders WHERE order_no = 1'),
	'CANCELLED', 'subscriber: order 1 still CANCELLED');

$sub->stop;
$pub->stop;
done_testing();
