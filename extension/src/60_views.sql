/*
 * extension/src/60_views.sql
 *	  Views: what needs a person (alipayplus.attention) and what the processor
 *	  is doing (alipayplus.stats).
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

/*
 * The views are created with pg_catalog alone on the search_path.  A view
 * binds its functions and operators when it is created, and under the
 * install script's own search_path (the extension's schema, pg_catalog
 * searched first) an exact-type look-alike in the extension's schema would
 * win where pg_catalog's candidate is not an exact match (format's VARIADIC
 * "any", anynonarray || text): code of any role that may create objects
 * there would run for every reader, the superuser included
 * (test/install_capture.sh).
 */
SET search_path = pg_catalog, pg_temp;

/* ------------------------------------------------------------------
 * What needs a person
 * ------------------------------------------------------------------ */

/*
 * Closing an item closes the reasons it had at that time: each reason
 * opens again when it arises after the close (a paid notification, the
 * deadline passing, the row falling overdue), and a CANCELLING row's
 * reasons with any attempt after the close; the times compared are clock
 * times (clock_timestamp), so a notification recorded after the close is
 * later than the close whenever its transaction began.
 */
CREATE VIEW alipayplus.attention AS
SELECT c.cancellation_id, c.sent_field, c.sent_id, c.payment_request_id,
	c.payment_id, c.state, c.attempt_count, c.last_result_status,
	c.last_result_code, c.last_result_message, c.last_attempt_at,
	c.requested_at, c.deadline,
	CASE
		WHEN c.needs_attention THEN c.attention_reason || coalesce('; and ' || l.late_paid, '')
		WHEN l.late_paid IS NOT NULL THEN l.late_paid
		WHEN l.unanswered THEN
			format('the gateway did not answer the last %s attempts (last: %s); the cancellation keeps retrying: check alipayplus.gateway_url and the network',
				   c.unanswered_streak, c.last_result_code)
		WHEN l.overdue THEN
			format('overdue since %s: the processor is not running or its runs fail (see alipayplus.processor_runs and cron.job_run_details)',
				   c.next_attempt_at)
		WHEN l.follow_overdue THEN
			format('Alipay+ cancelled the payment, and the bound order has waited since %s for the next processor run to update it: the processor is not running or its runs fail (see alipayplus.processor_runs); alipayplus_requeue_cancellation(%s) updates it now',
				   c.order_follow_at, c.cancellation_id)
		ELSE format('still CANCELLING after the cancel deadline %s; Alipay+ may answer CANCEL_WINDOW_EXCEED, consider a refund', c.deadline)
	END AS reason
FROM alipayplus.cancellations c
CROSS JOIN LATERAL (
	SELECT
		/* a paid notification after the request (or a paid order when it
		   was requested), not yet seen by a person */
		CASE WHEN c.late_payment_status = 'S'
				AND (c.attention_closed_at IS NULL OR c.late_payment_at > c.attention_closed_at) THEN
			format('%s, and the cancellation is %s: ask Alipay+ (inquiryPayment) whether the payment stands, and refund it if it does; then alipayplus_close_attention(%s, note)',
				   CASE WHEN c.late_payment_code = 'order.paid' THEN
						format('the bound order was paid when its cancellation was requested at %s', c.late_payment_at)
					ELSE format('a paid notification (S%s) arrived at %s after the cancellation was requested',
								coalesce(' ' || c.late_payment_code, ''), c.late_payment_at) END,
				   c.state, c.cancellation_id)
		END AS late_paid,
		c.state = 'CANCELLING' AND c.unanswered_streak >= 3
			AND (c.attention_closed_at IS NULL OR c.last_attempt_at > c.attention_closed_at) AS unanswered,
		c.state = 'CANCELLING' AND c.next_attempt_at < pg_catalog.now() - interval '10 minutes'
			AND (c.attention_closed_at IS NULL OR c.last_attempt_at > c.attention_closed_at
				 OR c.next_attempt_at + interval '10 minutes' > c.attention_closed_at) AS overdue,
		c.state = 'CANCELLING' AND c.deadline <= pg_catalog.now()
			AND (c.attention_closed_at IS NULL OR c.last_attempt_at > c.attention_closed_at
				 OR c.deadline > c.attention_closed_at) AS past_deadline,
		c.order_follow_at < pg_catalog.now() - interval '10 minutes' AS follow_overdue
) l
WHERE c.needs_attention
	OR l.late_paid IS NOT NULL
	OR l.unanswered OR l.overdue OR l.past_deadline OR l.follow_overdue
UNION ALL
/* an order at the cancelling value that no cancellation in progress will reach */
SELECT s.cancellation_id, NULL, NULL, s.request_id, s.payment_id, s.state,
	NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	format('the order with request id %s is at the cancelling value, but %s: request its cancellation again (alipayplus_request_cancel(payment_request_id => %L)), which moves the order to the cancelled value if Alipay+ cancelled it, or queues the cancellation',
		   s.request_id,
		   CASE WHEN s.cancellation_id IS NULL THEN 'no ledger row knows it'
				ELSE format('its ledger row %s is %s and flags nothing', s.cancellation_id, s.state) END,
		   s.request_id)
FROM alipayplus._stranded_orders() s
UNION ALL
/*
 * a resolution a person must decide (an F of the inquiry itself, a cancel
 * that was refused), or one left waiting for its inquiry: until the
 * payment is resolved again or its cancellation is requested
 */
SELECT NULL, r.sent_field, r.sent_id, r.payment_request_id, r.payment_id,
	'RESOLUTION ' || r.state, r.inquiry_count, NULL, NULL, r.last_result,
	NULL, r.requested_at, r.deadline,
	CASE WHEN r.state = 'ATTENTION' THEN
		format('resolution %s: %s after the inquiry answered %s%s; ask Alipay+ (alipayplus_inquire_payment) and fix what the answer says, then resolve it again (alipayplus_request_resolve) or cancel it (alipayplus_request_cancel)',
			   r.resolution_id, r.decision, r.last_result, coalesce(' (' || r.applied || ')', ''))
	ELSE format('resolution %s: its inquiry was due at %s: no resolver is running (alipayplus_resolve_backlog, alipayplus_process_resolutions, the background worker)',
				r.resolution_id, r.next_inquiry_at) END
FROM alipayplus.resolutions r
WHERE (r.state = 'ATTENTION'
	   AND NOT EXISTS (SELECT 1 FROM alipayplus.resolutions n
					   WHERE n.sent_field = r.sent_field AND n.sent_id = r.sent_id
						 AND n.resolution_id > r.resolution_id)
	   AND NOT EXISTS (SELECT 1 FROM alipayplus.cancellations c
					   WHERE c.sent_field = r.sent_field AND c.sent_id = r.sent_id))
	OR (r.state = 'RESOLVING' AND r.next_inquiry_at < pg_catalog.now() - interval '10 minutes');
COMMENT ON VIEW alipayplus.attention IS
	'Each cancellation or resolution a person must look at, and why, until it is handled (alipayplus_close_attention, or a resolution resolved again)';

/* ------------------------------------------------------------------
 * What the processor is doing
 * ------------------------------------------------------------------ */

CREATE VIEW alipayplus.stats AS
WITH recent AS (
	SELECT a.result_status, a.result_code, a.latency_ms
	FROM alipayplus.cancel_attempts a
	WHERE a.attempted_at > pg_catalog.now() - interval '1 hour'
)
SELECT
	/* backends waiting on Alipay+ right now (each may have many calls in flight) */
	(SELECT count(*) FROM pg_catalog.pg_stat_activity s
	 WHERE s.wait_event_type = 'Extension' AND s.wait_event = 'Extension'
	   AND s.query ~* 'alipayplus_(process_cancellations|run_cancellations|process_backlog|cancel_payment|inquire_payment|process_resolutions|resolve_backlog)') AS backends_calling,
	q.queued, q.due, q.oldest_due,
	(SELECT count(*) FROM alipayplus.cancellations x WHERE x.needs_attention) AS needing_attention,
	(SELECT count(*) FROM recent) AS attempts_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'S') AS s_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'F') AS f_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'U' AND result_code NOT LIKE 'local.%') AS u_last_hour,
	(SELECT count(*) FROM recent WHERE result_code LIKE 'local.%') AS local_last_hour,
	(SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p50_ms,
	(SELECT round(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p95_ms,
	(SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p99_ms,
	/* the resolutions (issue 15): being resolved, due, and the last hour's decisions */
	r.resolving, r.resolving_due,
	(SELECT count(*) FROM alipayplus.inquiries i
	 WHERE i.inquired_at > pg_catalog.now() - interval '1 hour') AS inquiries_last_hour,
	r.paid_last_hour, r.failed_last_hour, r.cancel_requested_last_hour,
	r.attention_last_hour, r.settled_elsewhere_last_hour
FROM (SELECT count(*) AS queued,
			 count(*) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()) AS due,
			 min(x.next_attempt_at) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()) AS oldest_due
	  FROM alipayplus.cancellations x
	  WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
		AND x.next_attempt_at IS NOT NULL) q
CROSS JOIN (SELECT count(*) FILTER (WHERE x.state = 'RESOLVING') AS resolving,
				   count(*) FILTER (WHERE x.state = 'RESOLVING'
									AND x.next_inquiry_at <= pg_catalog.now()) AS resolving_due,
				   count(*) FILTER (WHERE x.state = 'PAID' AND x.decided_at > pg_catalog.now() - interval '1 hour') AS paid_last_hour,
				   count(*) FILTER (WHERE x.state = 'FAILED' AND x.decided_at > pg_catalog.now() - interval '1 hour') AS failed_last_hour,
				   count(*) FILTER (WHERE x.state = 'CANCELLING' AND x.decided_at > pg_catalog.now() - interval '1 hour') AS cancel_requested_last_hour,
				   count(*) FILTER (WHERE x.state = 'ATTENTION' AND x.decided_at > pg_catalog.now() - interval '1 hour') AS attention_last_hour,
				   count(*) FILTER (WHERE x.state = 'SETTLED_ELSEWHERE' AND x.decided_at > pg_catalog.now() - interval '1 hour') AS settled_elsewhere_last_hour
			FROM alipayplus.resolutions x
			WHERE x.state = 'RESOLVING' OR x.decided_at > pg_catalog.now() - interval '1 hour') r;
COMMENT ON VIEW alipayplus.stats IS
	'Queue depth, the oldest due row, the last hour''s attempts by outcome with latency percentiles, and the resolutions: being resolved, due, and the last hour''s decisions';

/* back to the install script's search_path */
SET search_path = @extschema@;
