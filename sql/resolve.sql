--
-- resolve: the resolver of payments of unknown result (first step).
-- alipayplus_request_resolve queues; alipayplus_process_resolutions
-- inquires and decides: paid -> the order's paid value, failed -> its
-- failed value, nothing cancelled; still unknown at the end (in process,
-- ORDER_NOT_EXIST, unverified answers) or the cancel window closing soon ->
-- a cancellation is requested; an F of the inquiry itself -> a person.
-- Once a cancellation is requested, a later paid answer is recorded late
-- and the order stays cancelling.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
RESET client_min_messages;
CREATE EXTENSION alipayplus_cancel;
CREATE TABLE rs_orders (id int PRIMARY KEY, req text UNIQUE NOT NULL,
	status text NOT NULL DEFAULT 'PENDING', created timestamptz NOT NULL DEFAULT now());
SELECT alipayplus_bind_orders('rs_orders', 'req', 'status', 'CANCELLED', 'CANCELLING',
	initiated_at_column => 'created', paid_value => 'PAID', failed_value => 'FAILED',
	pending_values => ARRAY['PENDING']);
INSERT INTO rs_orders (id, req) VALUES
	(1, 'paid-rs'), (2, 'failed-USER_BALANCE_NOT_ENOUGH-rs'), (3, 'later-2-rs'),
	(4, 'inprocess-rs'), (5, 'notfound-rs'), (6, 'f-ACCESS_DENIED-rs'),
	(7, 'unsigned-S-rs'), (8, 'inprocess-rs-window'), (9, 'paid-rs-late'),
	(10, 'rs-refund');
SELECT gw_mark();

-- queued in the caller's transaction: nothing is sent
SELECT state, sent_field, sent_id, inquiry_count, initiated_at = created AS initiated_from_order,
	deadline = alipayplus_cancel_deadline(created) AS deadline_from_order
FROM rs_orders o, LATERAL alipayplus_request_resolve(payment_request_id => o.req,
	inquiry_interval => '10 ms', inquiry_total => CASE WHEN o.req IN ('inprocess-rs', 'notfound-rs')
		THEN interval '0' ELSE interval '1 hour' END) r
WHERE o.id <= 9 ORDER BY o.id;
SELECT count(*) AS requests_sent FROM gw_log();
-- asked again: the open resolution, not a second one
SELECT (alipayplus_request_resolve(payment_request_id => 'paid-rs')).resolution_id =
	(SELECT resolution_id FROM alipayplus.resolutions WHERE sent_id = 'paid-rs') AS same_resolution;
SELECT count(*) AS resolutions FROM alipayplus.resolutions;

-- the window about to close for one of them; a cancel requested meanwhile for another
UPDATE alipayplus.resolutions SET deadline = now() + interval '1 minute'
WHERE sent_id = 'inprocess-rs-window';
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'paid-rs-late');

-- the first run: one inquiry each (concurrently: the cancellations are
-- requested in the order the answers come, so their ids are not shown)
SELECT * FROM alipayplus_process_resolutions();
SELECT r.sent_id, r.state, r.decision, r.inquiry_count, r.last_result,
	regexp_replace(r.applied, '^cancellation \d+', 'cancellation N') AS applied,
	o.status AS order_status, c.state AS cancellation
FROM alipayplus.resolutions r JOIN rs_orders o ON o.req = r.sent_id
LEFT JOIN alipayplus.cancellations c ON c.cancellation_id = r.cancellation_id
ORDER BY o.id;

-- later-2-rs: in process twice, then paid; unsigned-S-rs: never decides
SELECT pg_sleep(0.05);
SELECT * FROM alipayplus_process_resolutions();
SELECT pg_sleep(0.05);
SELECT * FROM alipayplus_process_resolutions();
SELECT r.sent_id, r.state, r.decision, r.inquiry_count, r.last_result, o.status AS order_status
FROM alipayplus.resolutions r JOIN rs_orders o ON o.req = r.sent_id
WHERE r.sent_id IN ('later-2-rs', 'unsigned-S-rs') ORDER BY o.id;

-- every inquiry was recorded for its resolution, and the gateway saw each
SELECT r.sent_id, count(i.*) AS inquiries, gw_requests(r.sent_id) AS requests
FROM alipayplus.resolutions r LEFT JOIN alipayplus.inquiries i ON i.resolution_id = r.resolution_id
GROUP BY r.sent_id ORDER BY r.sent_id;
-- only inquiries: no cancelPayment went out while resolving
SELECT count(*) FILTER (WHERE j->>'api' = 'cancelPayment') AS cancel_requests FROM gw_log();

-- the cancellations requested are worked like any other; Alipay+ then says closed
-- (the pipeline serves both kinds: it also inquires about the one resolution
-- still due, unsigned-S-rs, which stays unknown)
SELECT pg_sleep(0.05);
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT sent_id, state, inquiry_count FROM alipayplus.resolutions WHERE sent_id = 'unsigned-S-rs';
SELECT req, status FROM rs_orders WHERE req IN ('inprocess-rs', 'notfound-rs', 'inprocess-rs-window', 'paid-rs-late') ORDER BY id;
SELECT payment_status, payment_code FROM alipayplus_inquire_payment(payment_request_id => 'inprocess-rs');
-- the late paid answer is on the cancellation, for a person
SELECT sent_id, state, late_payment_status FROM alipayplus.cancellations WHERE sent_id = 'paid-rs-late';

-- refused requests
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'inprocess-rs')$$);
SELECT alipayplus_note_refund('rs-refund');
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'rs-refund')$$);
INSERT INTO rs_orders (id, req, created) VALUES (20, 'rs-old', '2020-01-01');
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'rs-old')$$);
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'rs-x', inquiry_interval => '0')$$);
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'rs-x', inquiry_total => '2 days')$$);
SELECT errcheck($$SELECT alipayplus_request_resolve('p', 'r')$$);
SELECT errcheck($$SELECT alipayplus_request_resolve()$$);
BEGIN READ ONLY;
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'rs-x')$$);
SELECT errcheck($$SELECT * FROM alipayplus_process_resolutions()$$);
COMMIT;
SELECT count(*) AS resolutions_after_refusals FROM alipayplus.resolutions;

-- issue 15 review fixes: only pending orders are decided, under their row lock
-- refused at the request: an order no longer pending, an unknown one
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'paid-rs')$$);
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'rs-nobody')$$);
-- the caller's initiated_at does not move the bound order's window
INSERT INTO rs_orders (id, req, created) VALUES (11, 'inprocess-rs-init', now() - interval '1 minute'),
	(12, 'inprocess-rs-ship', now()), (13, 'paid-rs-trig', now()), (14, 'noecho-rs', now()),
	(15, 'failed-PROCESS_FAIL-rs-ok', now());
SELECT initiated_at = (SELECT created FROM rs_orders WHERE id = 11) AS initiated_from_order
FROM alipayplus_request_resolve(payment_request_id => 'inprocess-rs-init', initiated_at => now() - interval '6 days',
	inquiry_interval => '10 ms', inquiry_total => '1 hour');
-- queued, then shipped (cancel decision) / refused by an owner's trigger (paid)
SELECT count(*) FROM rs_orders o, LATERAL alipayplus_request_resolve(payment_request_id => o.req,
	inquiry_interval => '10 ms', inquiry_total => '0') WHERE o.id BETWEEN 12 AND 15;
UPDATE rs_orders SET status = 'SHIPPED' WHERE id = 12;
CREATE FUNCTION rs_no_paid() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
	IF NEW.req = 'paid-rs-trig' AND NEW.status = 'PAID' THEN
		RAISE EXCEPTION 'paid needs a ledger entry first';
	END IF;
	RETURN NEW;
END $f$;
CREATE TRIGGER rs_no_paid BEFORE UPDATE ON rs_orders FOR EACH ROW EXECUTE FUNCTION rs_no_paid();
SELECT * FROM alipayplus_process_resolutions();
SELECT r.sent_id, r.state, r.decision, regexp_replace(r.applied, '^cancellation \d+', 'cancellation N') AS applied,
	o.status AS order_status, (SELECT count(*) FROM alipayplus.cancellations c WHERE c.sent_id = r.sent_id) AS cancellations,
	(SELECT count(*) FROM alipayplus.inquiries i WHERE i.resolution_id = r.resolution_id
	 AND i.completed_at IS NOT NULL) AS inquiries
FROM alipayplus.resolutions r JOIN rs_orders o ON o.req = r.sent_id
WHERE o.id >= 12 ORDER BY o.id;
DROP TRIGGER rs_no_paid ON rs_orders;
-- a binding without paid_value / failed_value: refused
SELECT alipayplus_bind_orders('rs_orders', 'req', 'status', 'CANCELLED', 'CANCELLING',
	initiated_at_column => 'created', pending_values => ARRAY['PENDING']);
INSERT INTO rs_orders (id, req) VALUES (16, 'paid-rs-nobind');
SELECT errcheck($$SELECT alipayplus_request_resolve(payment_request_id => 'paid-rs-nobind')$$);
SELECT errcheck($$SELECT * FROM alipayplus_request_resolve_stale('0 s')$$);

-- nothing of it is PUBLIC
SELECT p.proname, NOT EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)
	AND p.proacl IS NOT NULL AS not_public
FROM pg_proc p WHERE p.proname IN ('alipayplus_request_resolve', 'alipayplus_process_resolutions',
	'_resolve_step', '_refuse_read_only_to') ORDER BY 1;
