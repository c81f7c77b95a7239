--
-- stale: which orders alipayplus_stale_orders picks, and how every function
-- that reads the binding's optional values (paid_value, failed_value) and
-- the status lists behaves with NULL statuses in the table, for each
-- combination of those values.  As a shop runs it: a non-superuser owner,
-- an enum status column that allows NULL, the owner's own trigger, an
-- application role with EXECUTE only.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
DROP SCHEMA IF EXISTS stale_shop CASCADE;
DROP ROLE IF EXISTS regress_stale_owner;
DROP ROLE IF EXISTS regress_stale_app;
RESET client_min_messages;
CREATE ROLE regress_stale_owner;
CREATE ROLE regress_stale_app;
CREATE SCHEMA stale_shop AUTHORIZATION regress_stale_owner;
GRANT USAGE ON SCHEMA stale_shop TO regress_stale_app;
GRANT EXECUTE ON FUNCTION alipayplus_stale_orders(interval),
	alipayplus_request_cancel(text, text, timestamptz),
	alipayplus_apply_payment_result(text, text, text, text) TO regress_stale_app;

SET ROLE regress_stale_owner;
CREATE TYPE stale_shop.order_status AS ENUM ('PENDING', 'AWAITING_3DS', 'PAID',
	'FAILED', 'SHIPPED', 'REFUNDED', 'EXPIRED', 'CANCELLING', 'CANCELLED');
CREATE TABLE stale_shop.orders (
	order_no serial PRIMARY KEY,
	req text NOT NULL UNIQUE,
	status stale_shop.order_status DEFAULT 'PENDING',	-- NULL allowed
	created_at timestamptz NOT NULL DEFAULT now(),
	changed_at timestamptz
);
-- the owner's own trigger
CREATE FUNCTION stale_shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.changed_at := clock_timestamp();
	RETURN NEW;
END;
$$;
CREATE TRIGGER touch BEFORE UPDATE ON stale_shop.orders
	FOR EACH ROW EXECUTE FUNCTION stale_shop.touch();
GRANT SELECT, INSERT, UPDATE ON stale_shop.orders TO regress_stale_app;
GRANT USAGE ON SEQUENCE stale_shop.orders_order_no_seq TO regress_stale_app;
RESET ROLE;

/*
 * What the application sees with the current binding, for orders tagged
 * tag: one order in each status (and one with no status) initiated two
 * minutes ago, one pending order just now.  Run as the application.
 */
CREATE FUNCTION stale_checks(tag text) RETURNS TABLE (step text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
	s text;
BEGIN
	INSERT INTO stale_shop.orders (req, status, created_at)
	SELECT tag || '-' || lower(coalesce(st, CASE WHEN i = 8 THEN 'null' ELSE 'null2' END)),
		st::stale_shop.order_status, now() - interval '2 minutes'
	FROM unnest(ARRAY['PENDING', 'AWAITING_3DS', 'PAID', 'FAILED', 'SHIPPED',
					  'REFUNDED', 'EXPIRED', NULL, NULL]) WITH ORDINALITY u(st, i)
	ORDER BY i;
	INSERT INTO stale_shop.orders (req, status) VALUES (tag || '-fresh', 'PENDING');

	step := 'stale after 1 minute';
	outcome := (SELECT string_agg(x, ' ' ORDER BY x) FROM alipayplus_stale_orders('1 minute') x
				WHERE x LIKE tag || '-%');
	RETURN NEXT;

	-- payment results: S and F on pending orders and on orders with no status
	FOR s IN SELECT unnest(ARRAY['pending S', 'awaiting_3ds F', 'null S', 'null2 F']) LOOP
		step := 'payment result ' || s;
		outcome := alipayplus_apply_payment_result(tag || '-' || split_part(s, ' ', 1),
												   split_part(s, ' ', 2));
		outcome := outcome || ', order ' || coalesce((SELECT o.status::text FROM stale_shop.orders o
			WHERE o.req = tag || '-' || split_part(s, ' ', 1)), 'NULL');
		RETURN NEXT;
	END LOOP;

	-- a cancel request for an order with no status
	UPDATE stale_shop.orders SET status = NULL WHERE req = tag || '-null';
	step := 'request cancel, no status';
	outcome := (SELECT c.state FROM alipayplus_request_cancel(payment_request_id => tag || '-null') c);
	outcome := outcome || ', order '
		|| (SELECT o.status::text FROM stale_shop.orders o WHERE o.req = tag || '-null');
	RETURN NEXT;
	step := 'guard: cancelling order to no status';
	outcome := errcheck(format('UPDATE stale_shop.orders SET status = NULL WHERE req = %L', tag || '-null'));
	RETURN NEXT;
	step := 'payment result S after the request';
	outcome := alipayplus_apply_payment_result(tag || '-null', 'S');
	RETURN NEXT;
	step := 'stale after the request';
	outcome := (SELECT string_agg(x, ' ' ORDER BY x) FROM alipayplus_stale_orders('1 minute') x
				WHERE x LIKE tag || '-%');
	RETURN NEXT;
	step := 'owner''s trigger ran';
	outcome := (SELECT count(*) FROM stale_shop.orders o WHERE o.req LIKE tag || '-%'
				AND o.changed_at IS NOT NULL)::text || ' orders changed';
	RETURN NEXT;
END;
$$;
ALTER FUNCTION stale_checks(text) OWNER TO regress_stale_app;

-- every combination of the optional values: only the pending values are
-- picked, never PAID, FAILED, SHIPPED, REFUNDED, EXPIRED or no status
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID', failed_value => 'FAILED',
	pending_values => ARRAY['PENDING', 'AWAITING_3DS']);
SELECT * FROM stale_checks('both');
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', paid_value => 'PAID',
	pending_values => ARRAY['PENDING', 'AWAITING_3DS']);
SELECT * FROM stale_checks('paid');
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status',
	cancelled_value => 'CANCELLED', cancelling_value => 'CANCELLING',
	initiated_at_column => 'created_at', failed_value => 'FAILED',
	pending_values => ARRAY['PENDING', 'AWAITING_3DS']);
SELECT * FROM stale_checks('failed');
-- positional, as a 1.2 caller would write it, and the pending values last
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', NULL, 'created_at', NULL, NULL, NULL, ARRAY['PENDING', 'AWAITING_3DS']);
SELECT * FROM stale_checks('neither');
SELECT pending_values, paid_value, failed_value FROM alipayplus.order_binding;

-- a binding without pending values (every 1.2 binding): stale orders are
-- refused with a hint, whatever the other values
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', NULL, 'created_at', 'PAID', 'FAILED');
SELECT errcheck($$SELECT alipayplus_stale_orders('1 minute')$$);
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at');
SELECT errcheck($$SELECT alipayplus_stale_orders('1 minute')$$);

-- pending values that cannot be right
SELECT errcheck($$SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at', pending_values => '{}')$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at', pending_values => ARRAY['PENDING', NULL])$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at', pending_values => ARRAY['PENDING', 'CANCELLING'])$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at', paid_value => 'PAID', pending_values => ARRAY['PAID'])$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at', pending_values => ARRAY['pending'])$$);
-- a refused binding changed nothing
SELECT pending_values FROM alipayplus.order_binding;

-- the old signature is gone, the new one is not PUBLIC
SELECT p.oid::regprocedure, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
FROM pg_proc p WHERE p.proname = 'alipayplus_bind_orders';

-- the guards with orders that have no status: truncate and bind again
SET ROLE regress_stale_owner;
SELECT errcheck('TRUNCATE stale_shop.orders');
RESET ROLE;
SELECT alipayplus_bind_orders('stale_shop.orders', 'req', 'status', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'created_at', pending_values => ARRAY['PENDING']);
SELECT count(*) FILTER (WHERE status IS NULL) AS without_status,
	count(*) FILTER (WHERE status = 'CANCELLING') AS cancelling
FROM stale_shop.orders;

-- a varchar(20) domain and a timestamp column with its zone, too
SET ROLE regress_stale_owner;
CREATE DOMAIN stale_shop.short_status AS varchar(20) CHECK (VALUE <> '');
CREATE TABLE stale_shop.orders2 (
	req varchar(64) PRIMARY KEY,
	st stale_shop.short_status,
	at timestamp NOT NULL
);
INSERT INTO stale_shop.orders2 VALUES
	('d-new', 'NEW', timezone('UTC', now()) - interval '2 hours'),
	('d-shipped', 'SHIPPED', timezone('UTC', now()) - interval '2 hours'),
	('d-null', NULL, timezone('UTC', now()) - interval '2 hours'),
	('d-recent', 'NEW', timezone('UTC', now()));
RESET ROLE;
-- the first table still has orders cancelling: a superuser retires its
-- binding on purpose before binding the second (a plain rebind is refused)
DELETE FROM alipayplus.order_binding;
SELECT alipayplus_bind_orders('stale_shop.orders2', 'req', 'st', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'at', initiated_at_time_zone => 'UTC',
	pending_values => ARRAY['NEW']);
SET ROLE regress_stale_app;
SELECT * FROM alipayplus_stale_orders('1 hour');
RESET ROLE;
SELECT errcheck($$SELECT alipayplus_bind_orders('stale_shop.orders2', 'req', 'st', 'CANCELLED',
	'CANCELLING', initiated_at_column => 'at', initiated_at_time_zone => 'UTC',
	pending_values => ARRAY['A_STATUS_LONGER_THAN_TWENTY'])$$);

-- only_pending (1.3): each order's status is checked again under its row
-- lock; one that is not pending (shipped, no status, no such order) is
-- skipped as not_pending and keeps its status
SELECT id, outcome, regexp_replace(detail, 'cancellation \d+', 'cancellation <id>') AS detail
FROM alipayplus_request_cancel_all(ARRAY['d-new', 'd-shipped', 'd-null', 'd-no-such-order'],
	only_pending => true) ORDER BY id;
SELECT req, st FROM stale_shop.orders2 ORDER BY req;
SELECT errcheck($$SELECT * FROM alipayplus_request_cancel_all(ARRAY['d-recent'], only_pending => NULL)$$);

-- many ids in one transaction (a backlog after an outage): the id locks
-- that serialise refunds and cancel requests stay within the lock table
SELECT outcome, count(*) FROM alipayplus_request_cancel_all(
	ARRAY(SELECT 'bulk-' || i FROM generate_series(1, 10000) i)) GROUP BY 1;
SELECT count(*) FROM alipayplus.cancellations WHERE sent_id LIKE 'bulk-%';
