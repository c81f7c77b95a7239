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
	 * cancellation was requested (cancellation_id); ATTENTION: a person
	 * must look (an F of the inquiry itself, or a cancel that was refused)
	 */
	state text NOT NULL DEFAULT 'RESOLVING'
		CHECK (state IN ('RESOLVING', 'PAID', 'FAILED', 'CANCELLING', 'ATTENTION')),
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

/* ------------------------------------------------------------------
 * Requesting a resolution
 * ------------------------------------------------------------------ */

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
BEGIN
	PERFORM alipayplus._refuse_read_only_to('resolve Alipay+ payments');
	PERFORM alipayplus._check_ids($1, $2);
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
		v_initiated := coalesce(v_initiated, o.initiated_at);
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

	IF v_decision IN ('paid', 'failed') THEN
		/* the order, through the notifications' path (a cancel requested
		   meanwhile keeps it cancelling: recorded_late) */
		v_applied := @extschema@.alipayplus_apply_payment_result(r.payment_request_id,
			CASE v_decision WHEN 'paid' THEN 'S' ELSE 'F' END, i.payment_code,
			coalesce(r.payment_id, i.payment_id));
	ELSIF v_decision = 'cancel' THEN
		BEGIN
			IF r.sent_field = 'paymentRequestId' THEN
				c := alipayplus._mark_cancelling(NULL, r.sent_id, r.initiated_at);
			ELSE
				c := alipayplus._mark_cancelling(r.sent_id, NULL, r.initiated_at);
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
 * The simplest worker
 * ------------------------------------------------------------------ */

/*
 * Work the due resolutions one inquiry after the other, in the caller's
 * transaction: each due row at most once per run, up to max_count
 * inquiries or until time_budget is spent.  Returns the counts of the
 * run's decisions.
 */
CREATE FUNCTION @extschema@.alipayplus_process_resolutions(max_count integer DEFAULT 100,
	time_budget interval DEFAULT interval '50 seconds')
RETURNS TABLE (inquired integer, paid integer, failed integer, cancel integer,
	attention integer, waiting integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	r alipayplus.resolutions;
	i alipayplus.inquiries;
	v_done bigint[] := '{}';
	v_stop timestamptz;
	v_decision text;
BEGIN
	PERFORM alipayplus._refuse_read_only_to('resolve Alipay+ payments');
	IF $1 IS NULL OR $1 < 1 OR $2 IS NULL OR $2 <= interval '0' OR $2 > interval '1 day' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'max_count must be at least 1 and time_budget between 0 and 1 day';
	END IF;
	v_stop := pg_catalog.clock_timestamp() + $2;
	inquired := 0; paid := 0; failed := 0; cancel := 0; attention := 0; waiting := 0;
	WHILE inquired < $1 AND pg_catalog.clock_timestamp() < v_stop LOOP
		SELECT * INTO r FROM alipayplus.resolutions x
		WHERE x.state = 'RESOLVING' AND x.next_inquiry_at <= pg_catalog.clock_timestamp()
			AND x.resolution_id <> ALL (v_done)
		ORDER BY x.next_inquiry_at, x.resolution_id
		LIMIT 1 FOR UPDATE SKIP LOCKED;
		EXIT WHEN NOT FOUND;
		v_done := v_done || r.resolution_id;
		IF r.sent_field = 'paymentRequestId' THEN
			i := alipayplus._inquire(NULL, r.sent_id, r.resolution_id);
		ELSE
			i := alipayplus._inquire(r.sent_id, NULL, r.resolution_id);
		END IF;
		inquired := inquired + 1;
		v_decision := alipayplus._resolve_step(r.resolution_id, i);
		CASE v_decision
			WHEN 'paid' THEN paid := paid + 1;
			WHEN 'failed' THEN failed := failed + 1;
			WHEN 'cancel' THEN cancel := cancel + 1;
			WHEN 'wait' THEN waiting := waiting + 1;
			ELSE attention := attention + 1;
		END CASE;
	END LOOP;
	RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_process_resolutions(integer, interval) IS
	'Inquire about the due resolutions one after the other and apply what each answer decides, in the caller''s transaction';
