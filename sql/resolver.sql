--
-- resolver: the resolutions on the claim-then-call pipeline (issue 15).
-- A DBA's statements: alipayplus_request_resolve_stale() queues every stale
-- pending order, CALL alipayplus_resolve_backlog() works the queue until
-- each is decided: paid -> paid, failed -> failed, in process or unknown
-- to Alipay+ -> cancelled after the total, the window closing -> cancelled
-- at once; an F of the inquiry itself -> a person.  Short interval and
-- total (0.2 s, 3 s: enough for three inquiries under valgrind or ASan) keep it fast.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
RESET client_min_messages;
CREATE EXTENSION alipayplus_cancel;
CREATE TABLE rv_orders (id int PRIMARY KEY, req text UNIQUE NOT NULL,
	status text NOT NULL DEFAULT 'PENDING', created timestamptz NOT NULL);
SELECT alipayplus_bind_orders('rv_orders', 'req', 'status', 'CANCELLED', 'CANCELLING',
	initiated_at_column => 'created', paid_value => 'PAID', failed_value => 'FAILED',
	pending_values => ARRAY['PENDING']);
INSERT INTO rv_orders (id, req, created) VALUES
	(1, 'paid-rv', now() - interval '20 minutes'),
	(2, 'failed-USER_BALANCE_NOT_ENOUGH-rv', now() - interval '20 minutes'),
	(3, 'later-2-rv', now() - interval '20 minutes'),
	(4, 'inprocess-rv', now() - interval '20 minutes'),
	(5, 'notfound-rv', now() - interval '20 minutes'),
	(6, 'f-ACCESS_DENIED-rv', now() - interval '20 minutes'),
	(7, 'inprocess-rv-window', now() - interval '20 minutes'),
	(8, 'inprocess-rv-fresh', now()),
	(9, 'paid-rv-cancelling', now() - interval '20 minutes');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'paid-rv-cancelling');
SELECT gw_mark();

-- one statement queues every stale pending order (not the fresh one, and not
-- the one whose cancellation is requested: that one can only become cancelled)
SELECT id, outcome, regexp_replace(detail, '\d+', 'N', 'g') AS detail
FROM alipayplus_request_resolve_stale('10 minutes', inquiry_interval => '0.2 s',
	inquiry_total => '3 s') ORDER BY id;
SELECT count(*) AS requests_sent FROM gw_log();
-- again: the open resolutions, not new ones
SELECT outcome, count(*) FROM alipayplus_request_resolve_stale('10 minutes') GROUP BY 1;
SELECT errcheck($$SELECT * FROM alipayplus_request_resolve_stale('10 minutes', inquiry_interval => '0')$$);
-- the window about to close for one of them
UPDATE alipayplus.resolutions SET deadline = now() + interval '1 minute'
WHERE sent_id = 'inprocess-rv-window';
SELECT resolving, resolving_due FROM alipayplus.stats;

-- one CALL works the queue: inquiries, decisions, the cancellations they request
SET client_min_messages = warning;
CALL alipayplus_resolve_backlog(time_budget => '1 minute', progress => NULL);
RESET client_min_messages;
SELECT r.sent_id, r.state, r.decision, o.status AS order_status, c.state AS cancellation,
	CASE WHEN r.sent_id IN ('inprocess-rv', 'notfound-rv') THEN r.inquiry_count >= 3
		 WHEN r.sent_id = 'later-2-rv' THEN r.inquiry_count = 3
		 ELSE r.inquiry_count = 1 END AS inquiries_as_expected,
	-- unknown is cancelled when the next inquiry would fall after the total
	r.decision = 'cancel' AND r.decided_at >= r.give_up_at - r.inquiry_interval AS cancelled_after_total
FROM alipayplus.resolutions r JOIN rv_orders o ON o.req = r.sent_id
LEFT JOIN alipayplus.cancellations c ON c.cancellation_id = r.cancellation_id
ORDER BY o.id;
-- no paid or failed order saw a cancelPayment; every inquiry was on record
-- before it left and is complete
SELECT count(*) FILTER (WHERE j->>'api' = 'cancelPayment'
		AND (j->>'paymentRequestId' LIKE 'paid-%' OR j->>'paymentRequestId' LIKE 'failed-%'
			 OR j->>'paymentRequestId' LIKE 'later-%')) AS paid_or_failed_cancelled,
	count(*) FILTER (WHERE j->>'api' = 'inquiryPayment') =
		(SELECT count(*) FROM alipayplus.inquiries) AS every_inquiry_recorded
FROM gw_log();
SELECT count(*) FILTER (WHERE completed_at IS NULL) AS open_inquiries,
	count(DISTINCT run_id) AS runs,
	bool_and(completed_at >= inquired_at) AS completed_after_sent
FROM alipayplus.inquiries;
SELECT caller, stopped_because, finished_at IS NOT NULL AS finished
FROM alipayplus.processor_runs ORDER BY run_id;
-- ops: the decisions of the last hour, the one a person must look at
SELECT resolving, resolving_due, paid_last_hour, failed_last_hour,
	cancel_requested_last_hour, attention_last_hour, inquiries_last_hour > 0 AS inquired
FROM alipayplus.stats;
SELECT sent_id, state, reason ~ 'F ACCESS_DENIED' AS says_why FROM alipayplus.attention
WHERE state LIKE 'RESOLUTION%';

-- statement_timeout during the backlog (a gateway that answers in 3 s): the
-- inquiry in flight is recorded as local.statement_timeout (never the
-- gateway's local.timeout) and decides nothing, the run says why, and
-- PostgreSQL's own error follows
INSERT INTO rv_orders (id, req, created) VALUES (10, 'slow-3000-rv-3', now());
SELECT (alipayplus_request_resolve(payment_request_id => 'slow-3000-rv-3', inquiry_interval => '0.05 s', inquiry_total => '1 hour')).state;
SET statement_timeout = '1s';
CALL alipayplus_resolve_backlog(progress => NULL);
RESET statement_timeout;
SELECT sent_id, state, decision FROM alipayplus.resolutions WHERE sent_id LIKE 'slow-%';
SELECT count(*) AS inquiries, string_agg(DISTINCT result_code, ',') AS codes,
	bool_and(completed_at IS NOT NULL) AS all_completed
FROM alipayplus.inquiries WHERE sent_id LIKE 'slow-%';
SELECT caller, stopped_because FROM alipayplus.processor_runs ORDER BY run_id DESC LIMIT 1;
SELECT count(*) AS open_inquiries FROM alipayplus.inquiries WHERE completed_at IS NULL;
-- (out of the way of what follows)
UPDATE alipayplus.resolutions SET next_inquiry_at = now() + interval '1 day' WHERE sent_id LIKE 'slow-%';

-- the SELECT form and the procedure serve resolutions too, in the same pipeline
INSERT INTO rv_orders (id, req, created) VALUES (11, 'paid-rv-2', now()), (12, 'later-5-rv-2', now());
SELECT (alipayplus_request_resolve(payment_request_id => 'paid-rv-2', inquiry_total => '1 s')).state;
SELECT (alipayplus_request_resolve(payment_request_id => 'later-5-rv-2', inquiry_total => '1 hour')).state;
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT sent_id, state, inquiry_count FROM alipayplus.resolutions WHERE sent_id LIKE '%-rv-2' ORDER BY 1;
SELECT pg_sleep(3.1);
CALL alipayplus_run_cancellations();
SELECT sent_id, state, inquiry_count FROM alipayplus.resolutions WHERE sent_id LIKE '%-rv-2' ORDER BY 1;
-- the worker's sleep covers the next inquiry
SELECT alipayplus._next_due() = (SELECT next_inquiry_at FROM alipayplus.resolutions
	WHERE sent_id = 'later-5-rv-2') AS next_due_is_the_inquiry;

-- refused where it cannot commit, and read-only
BEGIN;
SELECT errcheck($$CALL alipayplus_resolve_backlog()$$);
ROLLBACK;
BEGIN READ ONLY;
SELECT errcheck($$SELECT * FROM alipayplus_request_resolve_stale('10 minutes')$$);
COMMIT;
-- nothing of it is PUBLIC
SELECT p.proname, NOT EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)
	AND p.proacl IS NOT NULL AS not_public
FROM pg_proc p WHERE p.proname IN ('alipayplus_request_resolve_stale', 'alipayplus_resolve_backlog',
	'_claim_resolutions', '_settle_inquiry') ORDER BY 1;
