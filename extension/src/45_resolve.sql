/*
 * extension/src/45_resolve.sql
 *	  The resolver of payments whose result is unknown (issue 15), as
 *	  Alipay+'s guides prescribe it: inquire first (inquiryPayment, every
 *	  inquiry_interval for inquiry_total), apply a paid or failed answer to
 *	  the order through alipayplus_apply_payment_result, and request the
 *	  cancellation of only what is still unknown at the end, or when the
 *	  cancel window is about to close.
 *
 *	  A resolution is a row of alipayplus.resolutions: queued by
 *	  alipayplus_request_resolve in the caller's transaction (an outbox, no
 *	  network), due at next_inquiry_at while RESOLVING, and decided by one
 *	  step, alipayplus._resolve_step, per inquiry.  Any worker that can
 *	  claim a due row (FOR UPDATE SKIP LOCKED), make its inquiry
 *	  (alipayplus._inquire) and hand the answer to the step serves the
 *	  queue; alipayplus_process_resolutions is the simplest such worker,
 *	  one inquiry after the other in the caller's transaction.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

/* ------------------------------------------------------------------
 * The queue
 * ------------------------------------------------------------------ */

CREATE TABLE alipayplus.resolutions (
	resolution_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	/* the one id every inquiry (and the cancellation, if any) sends */
	sent_field text NOT NULL CHECK (sent_field IN ('paymentRequestId', 'paymentId')),
	sent_id text NOT NULL,
	payment_request_id text,
	payment_id text,
	initiated_at timestamptz,
	/* the end of the cancel window, when the initiation time is known */
	deadline timestamptz,
	/*
	 * RESOLVING: inquiries go on; PAID, FAILED: Alipay+ said so and the
	 * order was given the answer; CANCELLING: still unknown at the end, a
	 * cancellation was requested (cancellation_id); SETTLED_ELSEWHERE:
	 * the order was no longer pending when the answer came (paid by a
	 * notification, shipped, cancelled): nothing was applied; ATTENTION: a
	 * person must look (an F of the inquiry itself, a cancel that was
	 * refused, an answer the order could not be given)
	 */
	state text NOT NULL DEFAULT 'RESOLVING'
		CHECK (state IN ('RESOLVING', 'PAID', 'FAILED', 'CANCELLING', 'ATTENTION',
						 'SETTLED_ELSEWHERE')),
	inquiry_interval interval NOT NULL,
	/* no inquiry after this: a payment still unknown is cancelled */
	give_up_at timestamptz NOT NULL,
	/* a cancel is requested at once when the window ends sooner than this */
	cancel_margin interval NOT NULL DEFAULT interval '5 minutes',
	next_inquiry_at timestamptz,
	inquiry_count integer NOT NULL DEFAULT 0,
	last_inquiry_id bigint,
	last_result text,
	decided_at timestamptz,
	decision text,
	applied text,
	cancellation_id bigint,
	requested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	requested_by name NOT NULL DEFAULT session_user,
	CHECK (sent_id = CASE sent_field WHEN 'paymentRequestId' THEN payment_request_id
									 ELSE payment_id END),
	CHECK ((state = 'RESOLVING') = (next_inquiry_at IS NOT NULL)),
	CHECK ((state = 'RESOLVING') = (decided_at IS NULL)),
	CHECK ((state = 'CANCELLING') = (cancellation_id IS NOT NULL)),
	CHECK (inquiry_interval > interval '0'),
	CHECK (cancel_margin >= interval '0')
);
CREATE UNIQUE INDEX resolutions_open ON alipayplus.resolutions (sent_field, sent_id)
	WHERE state = 'RESOLVING';
CREATE INDEX resolutions_due ON alipayplus.resolutions (next_inquiry_at)
	WHERE state = 'RESOLVING';
COMMENT ON TABLE alipayplus.resolutions IS
	'Payments of unknown result being resolved: inquired until paid, failed or the end, then cancelled if still unknown';

SELECT pg_catalog.pg_extension_config_dump('alipayplus.resolutions', '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.resolutions', 'resolution_id'), '');

/* a resolution made due wakes the background worker too (40_processor.sql) */
CREATE TRIGGER resolutions_wake_worker AFTER INSERT OR UPDATE OF next_inquiry_at ON alipayplus.resolutions
	FOR EACH ROW WHEN (NEW.state = 'RESOLVING' AND NEW.next_inquiry_at IS NOT NULL)
	EXECUTE FUNCTION alipayplus._wake_worker();

/* ------------------------------------------------------------------
 * Requesting a resolution
 * ------------------------------------------------------------------ */

/*
 * Refuse to queue resolutions the resolver could not carry out: it gives
 * the order the paid or failed status Alipay+ tells, and decides only for
 * orders in one of the binding's pending values.
 */
CREATE FUNCTION alipayplus._resolve_binding()
RETURNS alipayplus.order_binding
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR b.paid_value IS NULL OR b.failed_value IS NULL OR b.pending_values IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'resolving payments needs a bound orders table with paid_value, failed_value and pending_values',
			DETAIL = 'The resolver gives the order the paid or failed status Alipay+ tells, and decides only for orders still pending; without them it could not apply what it learns.',
			HINT = 'Bind the table again with alipayplus_bind_orders(..., paid_value => ''PAID'', failed_value => ''FAILED'', pending_values => ARRAY[''PENDING'']); alipayplus_inquire_payment() asks Alipay+ without deciding anything.';
	END IF;
	RETURN b;
END;
$$;

/*
 * Queue the resolution of a payment whose result is unknown, in the
 * caller's transaction (no network).  The ids and the initiation time are
 * completed from the bound order, whose row is locked so that a concurrent
 * cancel request of it comes first or second, not both.  A payment with a
 * cancellation, a known refund or a closed cancel window is refused; a
 * payment already being resolved gives back its open row.
 */
CREATE FUNCTION @extschema@.alipayplus_request_resolve(payment_id text DEFAULT NULL,
	payment_request_id text DEFAULT NULL, initiated_at timestamptz DEFAULT NULL,
	inquiry_interval interval DEFAULT interval '3 seconds',
	inquiry_total interval DEFAULT interval '60 seconds')
RETURNS alipayplus.resolutions
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o record;
	r alipayplus.resolutions;
	v_field text := CASE WHEN $2 IS NOT NULL THEN 'paymentRequestId' ELSE 'paymentId' END;
	v_request_id text := $2;
	v_payment_id text := $1;
	v_initiated timestamptz := $3;
	v_deadline timestamptz;
	b alipayplus.order_binding;
BEGIN
	PERFORM alipayplus._refuse_read_only_to('resolve Alipay+ payments');
	PERFORM alipayplus._check_ids($1, $2);
	b := alipayplus._resolve_binding();
	IF $4 IS NULL OR $4 <= interval '0' OR $4 > interval '1 hour' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('inquiry_interval must be more than 0 and at most 1 hour, not %s',
							 coalesce($4::text, 'NULL')),
			HINT = 'Alipay+''s auto-debit guide inquires every 3 seconds.';
	END IF;
	IF $5 IS NULL OR $5 < interval '0' OR $5 > interval '1 day' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('inquiry_total must be between 0 and 1 day, not %s',
							 coalesce($5::text, 'NULL')),
			HINT = 'Alipay+''s auto-debit guide inquires for 60 seconds before it cancels.';
	END IF;

	o := alipayplus._lock_order(v_field, coalesce($2, $1));
	IF o.order_found THEN
		v_request_id := coalesce(v_request_id, o.request_id);
		v_payment_id := coalesce(v_payment_id, o.payment_id);
		/* the order's own time wins: a caller cannot move the window */
		v_initiated := coalesce(o.initiated_at, v_initiated);
	END IF;
	/* the request id whenever it is known, as for a cancellation */
	v_field := CASE WHEN v_request_id IS NOT NULL THEN 'paymentRequestId' ELSE 'paymentId' END;

	IF EXISTS (SELECT 1 FROM alipayplus.cancellations x
			   WHERE (x.sent_field = 'paymentRequestId' AND x.sent_id = v_request_id)
				  OR (x.payment_request_id = v_request_id)
				  OR (x.sent_field = 'paymentId' AND x.sent_id = v_payment_id
					  AND (v_request_id IS NULL OR x.payment_request_id IS NULL))) THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('the cancellation of %s is already requested', coalesce(v_request_id, v_payment_id)),
			DETAIL = 'Once a cancellation is requested, the order can only become cancelled: there is nothing left to resolve.',
			HINT = 'See alipayplus.cancellations; alipayplus_inquire_payment() still tells what Alipay+ knows.';
	END IF;
	IF EXISTS (SELECT 1 FROM alipayplus.known_refunds k
			   WHERE k.refund_request_id = v_request_id OR k.refund_id = v_payment_id) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA003',
			MESSAGE = format('%s is a known refund, not a payment', coalesce(v_request_id, v_payment_id)),
			HINT = 'Refunds are never cancelled; see alipayplus.known_refunds.';
	END IF;
	/* under the order's row lock: paid, shipped or unknown orders are not resolved */
	IF NOT coalesce(o.order_found AND o.status = ANY (b.pending_values), false) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA005',
			MESSAGE = CASE WHEN o.order_found
				THEN format('order %s is no longer pending: its status is %s', coalesce(v_request_id, v_payment_id), coalesce(o.status, 'NULL'))
				ELSE format('%s has no bound order, so it is not pending', coalesce(v_request_id, v_payment_id)) END,
			DETAIL = 'Only orders in one of the binding''s pending_values are resolved.',
			HINT = 'Nothing was changed; alipayplus_inquire_payment() tells what Alipay+ knows.';
	END IF;
	IF v_initiated IS NOT NULL THEN
		v_deadline := @extschema@.alipayplus_cancel_deadline(v_initiated);
		IF v_deadline <= pg_catalog.clock_timestamp() THEN
			RAISE EXCEPTION USING ERRCODE = 'ZA002',
				MESSAGE = format('the cancel window of %s closed at %s', coalesce(v_request_id, v_payment_id), v_deadline),
				HINT = 'A payment still unknown past its window cannot be cancelled: ask with alipayplus_inquire_payment(), and refund what was paid.';
		END IF;
	END IF;

	SELECT * INTO r FROM alipayplus.resolutions x
	WHERE x.state = 'RESOLVING' AND x.sent_field = v_field
		AND x.sent_id = CASE v_field WHEN 'paymentRequestId' THEN v_request_id ELSE v_payment_id END;
	IF FOUND THEN
		RETURN r;
	END IF;
	INSERT INTO alipayplus.resolutions AS x (sent_field, sent_id, payment_request_id,
		payment_id, initiated_at, deadline, inquiry_interval, give_up_at, next_inquiry_at)
	VALUES (v_field, CASE v_field WHEN 'paymentRequestId' THEN v_request_id ELSE v_payment_id END,
		v_request_id, v_payment_id, v_initiated, v_deadline, $4,
		pg_catalog.now() + $5, pg_catalog.now())
	RETURNING * INTO r;
	RETURN r;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_request_resolve(text, text, timestamptz, interval, interval) IS
	'Queue a payment of unknown result: inquire every inquiry_interval for inquiry_total, apply paid or failed, cancel what stays unknown; no network';

/* ------------------------------------------------------------------
 * One step: what an inquiry's answer decides
 * ------------------------------------------------------------------ */

/*
 * Apply one inquiry's answer to an open resolution and return what it
 * decided: paid, failed, attention, cancel (a cancellation was requested),
 * cancel_refused (the request was refused: attention) or wait.  Only a
 * verified answer decides; an unverified one, any U, and ORDER_NOT_EXIST
 * (Alipay+ does not know the payment yet) count as unknown.  Unknown at
 * the end (give_up_at), or with the cancel window ending within
 * cancel_margin of the next inquiry, means cancel.
 */
CREATE FUNCTION alipayplus._resolve_step(p_resolution_id bigint, i alipayplus.inquiries)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r alipayplus.resolutions;
	c alipayplus.cancellations;
	b alipayplus.order_binding;
	o record;
	v_verified boolean := coalesce(i.signature_verified, false);
	v_decision text;
	v_applied text;
	v_next timestamptz;
	v_now timestamptz := pg_catalog.clock_timestamp();
	v_msg text;
	v_state text;
BEGIN
	SELECT * INTO r FROM alipayplus.resolutions x
	WHERE x.resolution_id = p_resolution_id FOR UPDATE;
	IF NOT FOUND OR r.state <> 'RESOLVING' THEN
		RETURN 'not_resolving';
	END IF;

	IF v_verified AND i.result_status = 'S' AND i.payment_status = 'S' THEN
		v_decision := 'paid';
	ELSIF v_verified AND i.result_status = 'S' AND i.payment_status = 'F'
		  AND i.payment_code <> 'ORDER_NOT_EXIST' THEN
		v_decision := 'failed';
	ELSIF v_verified AND i.result_status = 'F' AND i.result_code <> 'ORDER_NOT_EXIST' THEN
		v_decision := 'attention';
	ELSE
		v_next := v_now + r.inquiry_interval;
		IF v_next > r.give_up_at
		   OR (r.deadline IS NOT NULL AND v_next > r.deadline - r.cancel_margin) THEN
			v_decision := 'cancel';
		ELSE
			v_decision := 'wait';
		END IF;
	END IF;

	IF v_decision IN ('paid', 'failed', 'cancel') THEN
		/*
		 * Only an order still pending is decided, as seen under its row
		 * lock: one paid by a notification, shipped or cancelled since it
		 * was queued keeps its status (a paid or failed answer about an
		 * order whose cancellation is requested is recorded late on the
		 * cancellation, as a late notification is)
		 */
		o := alipayplus._lock_order(r.sent_field, r.sent_id);
		SELECT * INTO b FROM alipayplus.order_binding;
		IF NOT coalesce(o.order_found AND o.status = ANY (b.pending_values), false) THEN
			IF v_decision <> 'cancel' AND o.status IN (b.cancelled_value, b.cancelling_value) THEN
				PERFORM @extschema@.alipayplus_apply_payment_result(r.payment_request_id,
					CASE v_decision WHEN 'paid' THEN 'S' ELSE 'F' END, i.payment_code,
					coalesce(r.payment_id, i.payment_id));
			END IF;
			v_applied := pg_catalog.format('%s answer not applied: the order is %s, no longer pending',
				v_decision, CASE WHEN o.order_found THEN coalesce(o.status, 'NULL') ELSE 'gone' END);
			v_decision := 'settled_elsewhere';
		END IF;
	END IF;

	IF v_decision IN ('paid', 'failed') THEN
		/*
		 * the order, through the notifications' path, in a subtransaction:
		 * an owner's trigger or CHECK that refuses it leaves the inquiry
		 * recorded and the resolution for a person, and the run goes on
		 */
		BEGIN
			v_applied := @extschema@.alipayplus_apply_payment_result(r.payment_request_id,
				CASE v_decision WHEN 'paid' THEN 'S' ELSE 'F' END, i.payment_code,
				coalesce(r.payment_id, i.payment_id));
			IF v_applied <> 'applied' THEN
				v_applied := pg_catalog.format('%s answer not applied (%s)', v_decision, v_applied);
				v_decision := 'not_applied';
			END IF;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			IF v_state IN ('57014', '57P01', '40001', '40P01') THEN
				RAISE;
			END IF;
			v_applied := pg_catalog.format('%s answer not applied: %s (SQLSTATE %s)',
				v_decision, v_msg, v_state);
			v_decision := 'not_applied';
		END;
	ELSIF v_decision = 'cancel' THEN
		BEGIN
			/* only_pending: never a paid or shipped order */
			IF r.sent_field = 'paymentRequestId' THEN
				c := alipayplus._mark_cancelling(NULL, r.sent_id, r.initiated_at, true);
			ELSE
				c := alipayplus._mark_cancelling(r.sent_id, NULL, r.initiated_at, true);
			END IF;
			v_applied := 'cancellation ' || c.cancellation_id || ' ' || c.state;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			IF v_state IN ('57014', '57P01', '40001', '40P01') THEN
				RAISE;
			END IF;
			v_decision := 'cancel_refused';
			v_applied := format('%s (SQLSTATE %s)', v_msg, v_state);
		END;
	END IF;

	UPDATE alipayplus.resolutions x SET
		inquiry_count = x.inquiry_count + 1,
		last_inquiry_id = i.inquiry_id,
		last_result = i.result_status || ' ' || i.result_code ||
			coalesce(' / ' || i.payment_status || ' ' || i.payment_code, '') ||
			CASE WHEN v_verified THEN '' ELSE ' (not verified)' END,
		state = CASE v_decision WHEN 'paid' THEN 'PAID' WHEN 'failed' THEN 'FAILED'
					WHEN 'cancel' THEN 'CANCELLING' WHEN 'wait' THEN 'RESOLVING'
					WHEN 'settled_elsewhere' THEN 'SETTLED_ELSEWHERE'
					ELSE 'ATTENTION' END,
		next_inquiry_at = CASE WHEN v_decision = 'wait' THEN v_next END,
		decided_at = CASE WHEN v_decision <> 'wait' THEN v_now END,
		decision = CASE WHEN v_decision <> 'wait' THEN v_decision END,
		applied = v_applied,
		cancellation_id = c.cancellation_id
	WHERE x.resolution_id = r.resolution_id;
	RETURN v_decision;
END;
$$;

/* ------------------------------------------------------------------
 * The resolutions on the claim-then-call pipeline (src/processor.c)
 * ------------------------------------------------------------------ */

/*
 * Claim up to p_width due resolutions for run p_run (SKIP LOCKED; rows of
 * p_skip are not claimed): each is leased (next_inquiry_at moved ahead by
 * p_lease) and given an inquiry row "no answer yet" (U
 * local.no_answer_yet, completed_at NULL) with the request it will send
 * (p_request_time), committed by the caller before the request leaves.
 * A row whose inquiry is still open is claimed again once its lease
 * expired, or at once when the run that sent it ended (its backend gone:
 * alipayplus._stale_attempts, which the claim step runs first, says so);
 * that inquiry is completed as U local.crashed, and the row is inquired
 * about again.
 */
CREATE FUNCTION alipayplus._claim_resolutions(p_run bigint, p_width integer,
	p_request_time text, p_lease interval, p_skip bigint[])
RETURNS TABLE (resolution_id bigint, inquiry_id bigint, sent_field text, sent_id text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	v_ids bigint[];
BEGIN
	v_ids := ARRAY(
		SELECT x.resolution_id FROM alipayplus.resolutions x
		WHERE x.state = 'RESOLVING' AND x.resolution_id <> ALL (p_skip)
			AND (x.next_inquiry_at <= pg_catalog.clock_timestamp()
				 OR EXISTS (SELECT 1 FROM alipayplus.inquiries i
							LEFT JOIN alipayplus.processor_runs p ON p.run_id = i.run_id
							WHERE i.resolution_id = x.resolution_id AND i.completed_at IS NULL
								AND i.run_id IS DISTINCT FROM p_run
								AND (p.finished_at IS NOT NULL OR p.run_id IS NULL)))
			/* an inquiry of a run still working is its own, however long it takes */
			AND NOT EXISTS (SELECT 1 FROM alipayplus.inquiries i
							JOIN alipayplus.processor_runs p ON p.run_id = i.run_id
							WHERE i.resolution_id = x.resolution_id AND i.completed_at IS NULL
								AND i.run_id IS DISTINCT FROM p_run
								AND alipayplus._run_alive(p))
		ORDER BY x.next_inquiry_at, x.resolution_id
		LIMIT p_width
		FOR UPDATE SKIP LOCKED);
	IF pg_catalog.cardinality(v_ids) = 0 THEN
		RETURN;
	END IF;
	UPDATE alipayplus.inquiries i SET
		result_code = 'local.crashed',
		result_message = 'no answer recorded; the outcome is unknown',
		error_detail = CASE WHEN p.finished_at IS NOT NULL OR p.run_id IS NULL
			THEN pg_catalog.format('processor run %s ended before the answer was recorded', i.run_id)
			ELSE pg_catalog.format('the claim of processor run %s expired without an answer recorded', i.run_id) END,
		completed_at = pg_catalog.clock_timestamp()
	FROM alipayplus.inquiries j
	LEFT JOIN alipayplus.processor_runs p ON p.run_id = j.run_id
	WHERE j.inquiry_id = i.inquiry_id
		AND i.resolution_id = ANY (v_ids) AND i.completed_at IS NULL;
	UPDATE alipayplus.resolutions x SET
		next_inquiry_at = pg_catalog.clock_timestamp() + p_lease
	WHERE x.resolution_id = ANY (v_ids);
	RETURN QUERY
	INSERT INTO alipayplus.inquiries AS i (sent_field, sent_id, request_time,
		result_status, result_code, result_message, resolution_id, run_id, completed_at)
	SELECT y.sent_field, y.sent_id, p_request_time, 'U', 'local.no_answer_yet',
		'no answer yet: the request is on its way', y.resolution_id, p_run, NULL
	FROM alipayplus.resolutions y
	WHERE y.resolution_id = ANY (v_ids)
	ORDER BY y.next_inquiry_at, y.resolution_id
	RETURNING i.resolution_id, i.inquiry_id, i.sent_field, i.sent_id;
END;
$$;

/*
 * Complete a claimed inquiry with its answer (or the reason there is
 * none) and, with p_decide, apply what it decides (alipayplus._resolve_step):
 * returns the decision and the resolution's next inquiry time.  Without
 * p_decide (no answer: an interrupt, the time budget, a shutdown) nothing
 * is decided and the resolution is due again at once ('unanswered').  An
 * inquiry completed meanwhile (its lease expired and another run took the
 * row) is left as it is ('not_open').
 */
CREATE FUNCTION alipayplus._settle_inquiry(p_inquiry_id bigint, p_decide boolean,
	p_answered_at timestamptz, p_http_status integer, p_result_status text,
	p_result_code text, p_result_message text, p_acquirer_id text, p_psp_id text,
	p_signature_verified boolean, p_latency_ms double precision, p_error_detail text,
	p_payment_status text, p_payment_code text, p_payment_message text,
	p_payment_id text, p_payment_request_id text, p_payment_time timestamptz,
	p_amount_currency text, p_amount_value bigint)
RETURNS TABLE (decision text, next_inquiry_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	i alipayplus.inquiries;
BEGIN
	UPDATE alipayplus.inquiries x SET
		result_status = p_result_status, result_code = p_result_code,
		result_message = p_result_message, payment_status = p_payment_status,
		payment_code = p_payment_code, payment_message = p_payment_message,
		payment_id = p_payment_id, payment_request_id = p_payment_request_id,
		payment_time = p_payment_time, amount_currency = p_amount_currency,
		amount_value = p_amount_value, acquirer_id = p_acquirer_id, psp_id = p_psp_id,
		http_status = p_http_status, signature_verified = p_signature_verified,
		latency_ms = p_latency_ms, error_detail = p_error_detail,
		completed_at = p_answered_at
	WHERE x.inquiry_id = p_inquiry_id AND x.completed_at IS NULL
	RETURNING * INTO i;
	IF NOT FOUND THEN
		RETURN QUERY SELECT 'not_open'::text, NULL::timestamptz;
		RETURN;
	END IF;
	IF p_decide THEN
		decision := alipayplus._resolve_step(i.resolution_id, i);
	ELSE
		UPDATE alipayplus.resolutions x SET
			next_inquiry_at = pg_catalog.clock_timestamp(),
			last_inquiry_id = i.inquiry_id,
			last_result = i.result_status || ' ' || i.result_code
		WHERE x.resolution_id = i.resolution_id AND x.state = 'RESOLVING';
		decision := 'unanswered';
	END IF;
	SELECT x.next_inquiry_at INTO next_inquiry_at
	FROM alipayplus.resolutions x WHERE x.resolution_id = i.resolution_id;
	RETURN NEXT;
END;
$$;

/*
 * The earliest due time of a row the processor would claim (for the
 * background worker's sleep): a cancellation's next attempt, a
 * resolution's next inquiry (issue 15), or an order still to follow its
 * CANCELLED ledger row
 */
CREATE FUNCTION alipayplus._next_due()
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN LEAST(
	(SELECT min(x.next_attempt_at) FROM alipayplus.cancellations x
	 WHERE x.state = 'CANCELLING' AND NOT x.needs_attention),
	(SELECT min(r.next_inquiry_at) FROM alipayplus.resolutions r
	 WHERE r.state = 'RESOLVING'),
	(SELECT min(x.order_follow_at) FROM alipayplus.cancellations x
	 WHERE x.order_follow_at IS NOT NULL));

/*
 * The due resolutions, at most one inquiry each, through the pipeline in
 * the caller's transaction (max_concurrency calls in flight): the counts
 * of what the answers decided.  A cancellation it requests is processed
 * by the cancellation processors, as any other.
 */
CREATE FUNCTION @extschema@.alipayplus_process_resolutions(max_count integer DEFAULT 100,
	time_budget interval DEFAULT interval '50 seconds')
RETURNS TABLE (inquired integer, paid integer, failed integer, cancel integer,
	attention integer, waiting integer, settled_elsewhere integer)
AS 'MODULE_PATHNAME', 'alipayplus_process_resolutions'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.alipayplus_process_resolutions(integer, interval) IS
	'Inquire about the due resolutions (at most once each, max_concurrency in flight) and apply what each answer decides, in the caller''s transaction';

/*
 * A DBA's single statement over many orders: the resolution of every
 * bound order still pending and initiated longer than older_than ago
 * (alipayplus_stale_orders), each queued by alipayplus_request_resolve in a
 * subtransaction of its own; one row per order: queued, already_resolving,
 * or why not (not_pending: its status changed since the list was read, as
 * seen under its row lock; cancel_requested, window_closed, refund, error).
 */
CREATE FUNCTION @extschema@.alipayplus_request_resolve_stale(older_than interval,
	inquiry_interval interval DEFAULT interval '3 seconds',
	inquiry_total interval DEFAULT interval '60 seconds')
RETURNS TABLE (id text, outcome text, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	v_id text;
	v_open boolean;
	r alipayplus.resolutions;
	v_state text;
	v_msg text;
BEGIN
	/* refused as a whole, before anything else */
	PERFORM alipayplus._refuse_read_only_to('resolve Alipay+ payments');
	PERFORM alipayplus._resolve_binding();
	FOR v_id IN SELECT s FROM @extschema@.alipayplus_stale_orders($1) s LOOP
		BEGIN
			/* still pending under the order's row lock (shipped or paid
			   meanwhile: not_pending, from alipayplus_request_resolve) */
			v_open := EXISTS (SELECT 1 FROM alipayplus.resolutions x
							  WHERE x.state = 'RESOLVING' AND x.payment_request_id = v_id);
			r := @extschema@.alipayplus_request_resolve(payment_request_id => v_id,
				inquiry_interval => $2, inquiry_total => $3);
			RETURN QUERY SELECT v_id,
				CASE WHEN v_open THEN 'already_resolving' ELSE 'queued' END,
				pg_catalog.format('resolution %s, %s', r.resolution_id, r.state);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			/* bad arguments and interrupts end the statement */
			IF v_state IN ('57014', '57P01', '22023') THEN
				RAISE;
			END IF;
			RETURN QUERY SELECT v_id,
				CASE v_state WHEN '55000' THEN 'cancel_requested'
							 WHEN 'ZA005' THEN 'not_pending'
							 WHEN 'ZA002' THEN 'window_closed'
							 WHEN 'ZA003' THEN 'refund'
							 ELSE 'error' END,
				pg_catalog.format('%s (SQLSTATE %s)', v_msg, v_state);
		END;
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_request_resolve_stale(interval, interval, interval) IS
	'Queue the resolution of every bound order still pending and older than older_than; one row per order with what was done';

/*
 * For a DBA's backlog of payments of unknown result: the pipeline serving
 * resolutions and the cancellations they request, committing as it goes,
 * waiting for each resolution's next inquiry until every one is decided
 * or time_budget is spent; progress NOTICEs (paid, failed, cancellations
 * requested and done, for a person, still unknown, rate) every progress.
 */
CREATE PROCEDURE @extschema@.alipayplus_resolve_backlog(max_count integer DEFAULT 1000000,
	time_budget interval DEFAULT '1 hour', progress interval DEFAULT '5 seconds')
AS 'MODULE_PATHNAME', 'alipayplus_resolve_backlog'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_resolve_backlog(integer, interval, interval) IS
	'Work the resolutions (and the cancellations they request) until each is decided, committing as it goes, with progress NOTICEs';
