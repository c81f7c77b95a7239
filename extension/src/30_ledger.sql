/*
 * extension/src/30_ledger.sql
 *	  The ledger: its internal rules (lock and move the bound order, mark a
 *	  payment CANCELLING, make and settle one attempt) and the public calls
 *	  that cancel now (alipayplus_cancel_payment) or queue the cancellation
 *	  (alipayplus_request_cancel, alipayplus_request_cancel_all), and
 *	  alipayplus.check_ledger, which lists attempts without their ledger row.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

/* ------------------------------------------------------------------
 * Ledger internals
 *
 * Every read and write of the user's orders table goes through
 * alipayplus._order_exec(), which runs it as the table's owner: the
 * ledger functions below are SECURITY DEFINER (owned by the superuser
 * who installed the extension), and the owner's triggers, CHECK and
 * domain constraints and index expressions must never run with more
 * rights than the owner has.
 * ------------------------------------------------------------------ */

/* SQL type of a column, for casting parameters into it */
CREATE FUNCTION alipayplus._column_type(tbl regclass, col name)
RETURNS text
LANGUAGE sql STABLE STRICT
RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0
			AND NOT a.attisdropped);

/* An id read from an order row: NULL when it is empty or blank */
CREATE FUNCTION alipayplus._clean_id(id text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN pg_catalog.btrim($1) = '' THEN NULL ELSE $1 END;

/* The order column that holds ids of a kind ('paymentRequestId' or 'paymentId') */
CREATE FUNCTION alipayplus._order_column(b alipayplus.order_binding, p_field text)
RETURNS name
LANGUAGE sql IMMUTABLE
RETURN CASE $2 WHEN 'paymentRequestId' THEN ($1).request_id_column
			   WHEN 'paymentId' THEN ($1).payment_id_column END;

/*
 * Lock the bound order row whose p_field id is p_id, as the table owner,
 * and return what it holds.  order_found is false when nothing is bound,
 * the binding has no column for that kind of id, or no row has it.  More
 * than one row with the id is an error, and so are ids in the row that
 * Alipay+ could not be sent (empty or blank ones count as absent).  With
 * p_nowait, a row locked by another transaction raises lock_not_available
 * at once.
 *
 * Lock order: every path locks the order row before the ledger row, except
 * the processor, which claims ledger rows with SKIP LOCKED and then takes the
 * order row with NOWAIT, so it never waits while holding a ledger row.
 */
CREATE FUNCTION alipayplus._lock_order(p_field text, p_id text,
	p_nowait boolean DEFAULT false,
	OUT order_found boolean, OUT status text, OUT request_id text,
	OUT payment_id text, OUT initiated_at timestamptz)
LANGUAGE plpgsql
AS $$
DECLARE
	b alipayplus.order_binding;
	key_col name;
	initiated text;
	r text[];
	n integer := 0;
	problem text;
BEGIN
	order_found := false;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR p_id IS NULL THEN
		RETURN;
	END IF;
	key_col := alipayplus._order_column(b, p_field);
	IF key_col IS NULL THEN
		RETURN;
	END IF;
	initiated := CASE
		WHEN b.initiated_at_column IS NULL THEN 'NULL'
		WHEN b.initiated_at_time_zone IS NULL THEN
			format('pg_catalog.to_char(pg_catalog.timezone(''UTC'', %I), ''YYYY-MM-DD"T"HH24:MI:SS.US'')',
				   b.initiated_at_column)
		ELSE format('pg_catalog.to_char(pg_catalog.timezone(''UTC'', pg_catalog.timezone(%L, %I)), ''YYYY-MM-DD"T"HH24:MI:SS.US'')',
					b.initiated_at_time_zone, b.initiated_at_column)
		END;
	FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
		format('SELECT %I::pg_catalog.text, %I::pg_catalog.text, %s, %s FROM %s WHERE %I OPERATOR(pg_catalog.=) $1 FOR UPDATE%s',
			   b.status_column, b.request_id_column,
			   CASE WHEN b.payment_id_column IS NULL THEN 'NULL'
					ELSE format('%I::pg_catalog.text', b.payment_id_column) END,
			   initiated, b.orders, key_col,
			   CASE WHEN p_nowait THEN ' NOWAIT' ELSE '' END),
		ARRAY[p_id], ARRAY[key_col])
	LOOP
		n := n + 1;
		IF n > 1 THEN
			RAISE EXCEPTION USING ERRCODE = 'cardinality_violation',
				MESSAGE = format('more than one row of %s has %s = %L', b.orders, key_col, p_id),
				DETAIL = 'A payment must be one order row; the extension will not guess which one is meant.',
				HINT = format('Remove the duplicates and add a unique constraint on %s.', key_col);
		END IF;
		order_found := true;
		status := r[1];
		request_id := alipayplus._clean_id(r[2]);
		payment_id := alipayplus._clean_id(r[3]);
		initiated_at := (r[4] || '+00')::timestamptz;
	END LOOP;
	IF NOT order_found THEN
		RETURN;
	END IF;

	problem := alipayplus._id_problem(request_id);
	IF problem IS NOT NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('the %s of the order with %s = %L %s', b.request_id_column, key_col, p_id, problem),
			HINT = 'Correct the order row: Alipay+ can only be sent ids of 1 to 64 characters without control characters.';
	END IF;
	problem := alipayplus._id_problem(payment_id);
	IF problem IS NOT NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('the %s of the order with %s = %L %s', b.payment_id_column, key_col, p_id, problem),
			HINT = 'Correct the order row: Alipay+ can only be sent ids of 1 to 64 characters without control characters.';
	END IF;
END;
$$;

/*
 * Set the status of the bound order whose p_field id is p_id, as the table
 * owner, and make sure it took: an owner's BEFORE trigger returning NULL or
 * a row security policy can skip an UPDATE without an error, which would
 * leave the order behind the ledger unnoticed.
 */
CREATE FUNCTION alipayplus._set_order_status(p_field text, p_id text, p_status text,
	p_ledger_field text DEFAULT NULL, p_ledger_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	b alipayplus.order_binding;
	key_col name;
	r text[];
	n integer := 0;
	now_status text;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR p_status IS NULL OR p_id IS NULL THEN
		RETURN;
	END IF;
	key_col := alipayplus._order_column(b, p_field);
	IF key_col IS NULL THEN
		RETURN;
	END IF;
	FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
		format('UPDATE %s SET %I = $1 WHERE %I OPERATOR(pg_catalog.=) $2 '
			   'AND (%I IS NULL OR NOT %I OPERATOR(pg_catalog.=) $1) RETURNING %I::pg_catalog.text',
			   b.orders, b.status_column, key_col, b.status_column,
			   b.status_column, b.status_column),
		ARRAY[p_status, p_id], ARRAY[b.status_column, key_col],
		CASE WHEN p_status IN (b.cancelled_value, b.cancelling_value)
			 THEN ARRAY[coalesce(p_ledger_field, p_field), coalesce(p_ledger_id, p_id), p_status] END)
	LOOP
		n := n + 1;
		now_status := r[1];
	END LOOP;
	IF n = 0 THEN
		/* nothing to change, or nothing changed: look */
		FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
			format('SELECT %I::pg_catalog.text FROM %s WHERE %I OPERATOR(pg_catalog.=) $1',
				   b.status_column, b.orders, key_col),
			ARRAY[p_id], ARRAY[key_col])
		LOOP
			n := n + 1;
			now_status := r[1];
		END LOOP;
		IF n = 0 THEN
			RETURN;
		END IF;
	END IF;
	/*
	 * One payment, one order row: a table without a unique index on the
	 * id (a partitioned one) may have gained a second row with the id
	 * since the order was locked; then this update is undone with the
	 * error, and the ledger row says why.
	 */
	IF n > 1 THEN
		RAISE EXCEPTION USING ERRCODE = 'cardinality_violation',
			MESSAGE = format('%s rows of %s have %s = %L; exactly one was to be set to %L',
							 n, b.orders, key_col, p_id, p_status),
			DETAIL = 'A payment must be one order row; the extension will not guess which one is meant, and changed none.',
			HINT = format('Remove the duplicates (and add a unique constraint on %s if the table can have one), then run alipayplus_requeue_cancellation().', key_col);
	END IF;
	IF now_status IS DISTINCT FROM p_status THEN
		RAISE EXCEPTION USING ERRCODE = 'triggered_data_change_violation',
			MESSAGE = format('the order with %s = %L was not set to %L; it is %L',
							 key_col, p_id, p_status, now_status),
			DETAIL = 'An update of the orders table changed nothing: a trigger returned NULL, a rule or row security policy skipped the row, or a trigger rewrote the status.',
			HINT = 'Let updates of the status column by the table''s owner through.';
	END IF;
END;
$$;

/* Refuse ids known to be refunds */
CREATE FUNCTION alipayplus._refuse_refund(p_payment_id text, p_request_id text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM alipayplus.known_refunds r
			   WHERE r.refund_request_id IN (p_payment_id, p_request_id)
				  OR r.refund_id IN (p_payment_id, p_request_id)) THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA003',
			MESSAGE = format('%s is a refund, not a payment', coalesce(p_request_id, p_payment_id)),
			DETAIL = 'It is listed in alipayplus.known_refunds.',
			HINT = 'cancelPayment works on payments only; a refund cannot be cancelled.';
	END IF;
END;
$$;

/*
 * Mark a payment CANCELLING in the ledger (and its bound order), creating
 * the ledger row if needed; returns the ledger row, locked.  The row is
 * keyed by the one id it sends: the request id when known (given, or read
 * from the bound order), else the payment id.  Refuses refunds and
 * payments past their cancel deadline before changing anything.  With
 * p_only_pending (the stale-orders sweep) it re-checks the order's status
 * under its row lock and refuses (ZA005, not_pending) an order no longer in
 * one of the binding's pending values; any request of an order at the paid
 * value keeps that it was paid (late_payment_*), so alipayplus.attention
 * shows it.  Written in C (src/ledger.c).
 */
CREATE FUNCTION alipayplus._mark_cancelling(p_payment_id text, p_request_id text,
	p_initiated_at timestamptz, p_only_pending boolean DEFAULT false)
RETURNS alipayplus.cancellations
AS 'MODULE_PATHNAME', 'alipayplus_mark_cancelling'
LANGUAGE C VOLATILE;

/*
 * Next retry delay: exponential from alipayplus.retry_base_ms (8 times
 * slower for F results), capped at alipayplus.retry_max_ms, with jitter
 * between half and all of it.  Computed in floating point milliseconds
 * and capped before it becomes an interval, so no attempt count can
 * overflow it.  The settings carry units ("200ms", "15min"), which the
 * interval input understands.
 */
CREATE FUNCTION alipayplus._retry_delay(attempts integer, slow boolean)
RETURNS interval
LANGUAGE sql VOLATILE
RETURN pg_catalog.make_interval(secs => least(
			extract(epoch FROM current_setting('alipayplus.retry_max_ms')::interval)::float8,
			extract(epoch FROM current_setting('alipayplus.retry_base_ms')::interval)::float8
			* CASE WHEN $2 THEN 8 ELSE 1 END
			* power(2::float8, least(greatest(coalesce($1, 1) - 1, 0), 60)))
	* (0.5 + random() * 0.5));

/* Whether an attempt got no answer at all from the gateway */
CREATE FUNCTION alipayplus._unanswered(code text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
RETURN $1 IN ('local.connect_failed', 'local.tls_failed', 'local.timeout');

/*
 * Record an answer (a row with the columns of alipayplus._call_cancel) for
 * the locked ledger row c and apply it, in a subtransaction; if applying
 * fails, the answer is recorded anyway and the row flagged.
 */
CREATE FUNCTION alipayplus._settle(c alipayplus.cancellations, r record,
	p_caller text)
RETURNS alipayplus.cancel_attempts
AS 'MODULE_PATHNAME', 'alipayplus_settle'
LANGUAGE C VOLATILE STRICT;

/* One attempt for a locked ledger row: call (outside any subtransaction), then settle */
CREATE FUNCTION alipayplus._attempt(c alipayplus.cancellations, p_caller text)
RETURNS alipayplus.cancel_attempts
LANGUAGE plpgsql
AS $$
DECLARE
	r record;
BEGIN
	IF c.sent_field = 'paymentRequestId' THEN
		SELECT * INTO r FROM alipayplus._call_cancel(NULL, c.sent_id);
	ELSE
		SELECT * INTO r FROM alipayplus._call_cancel(c.sent_id, NULL);
	END IF;
	RETURN alipayplus._settle(c, r, p_caller);
END;
$$;

/* ------------------------------------------------------------------
 * Public ledger API
 * ------------------------------------------------------------------ */

CREATE FUNCTION @extschema@.alipayplus_cancel_payment(payment_id text DEFAULT NULL,
	payment_request_id text DEFAULT NULL)
RETURNS TABLE (result_status text, result_code text, result_message text,
	acquirer_id text, psp_id text, attempt_id bigint, cancellation_id bigint,
	state text)
AS 'MODULE_PATHNAME', 'alipayplus_cancel_payment'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
ROWS 1;
COMMENT ON FUNCTION @extschema@.alipayplus_cancel_payment(text, text) IS
	'Mark the payment CANCELLING, call cancelPayment now and apply the result, all in the caller''s transaction';

CREATE FUNCTION @extschema@.alipayplus_request_cancel(payment_id text DEFAULT NULL,
	payment_request_id text DEFAULT NULL, initiated_at timestamptz DEFAULT NULL)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN alipayplus._mark_cancelling($1, $2, $3);
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_request_cancel(text, text, timestamptz) IS
	'Transactional outbox: mark CANCELLING and queue the call, no network; the processor makes the call after commit';

/* ------------------------------------------------------------------
 * Queueing many at once
 * ------------------------------------------------------------------ */

/*
 * Request the cancellation of every payment in the list (request ids, or
 * payment ids with by_payment_id), each in its own subtransaction: what
 * cannot be cancelled is skipped and reported, never aborts the rest.
 * One row per id: outcome is queued, already_requested, window_closed,
 * refund, invalid_id, several_orders, not_pending (only_pending: the order
 * is not, or no longer, in a pending status) or error, with the reason.
 */
CREATE FUNCTION @extschema@.alipayplus_request_cancel_all(ids text[],
	by_payment_id boolean DEFAULT false, only_pending boolean DEFAULT false)
RETURNS TABLE (id text, outcome text, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	v_id text;
	v_before bigint;
	c alipayplus.cancellations;
	v_state text;
	v_msg text;
BEGIN
	/* refused as a whole, before anything else, not reported id by id (18.8) */
	PERFORM alipayplus._refuse_read_only();
	IF $3 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'only_pending must be true or false';
	END IF;
	IF $3 AND NOT EXISTS (SELECT 1 FROM alipayplus.order_binding b
						  WHERE b.pending_values IS NOT NULL) THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'only_pending needs a bound orders table with pending status values',
			HINT = 'Bind it with alipayplus_bind_orders(..., pending_values => ARRAY[''PENDING'']).';
	END IF;
	FOREACH v_id IN ARRAY coalesce($1, '{}') LOOP
		BEGIN
			SELECT count(*) INTO v_before FROM alipayplus.cancellations x
			WHERE CASE WHEN $2 THEN x.payment_id = v_id
					   ELSE x.sent_field = 'paymentRequestId' AND x.sent_id = v_id END;
			IF $2 THEN
				c := alipayplus._mark_cancelling(v_id, NULL, NULL, $3);
			ELSE
				c := alipayplus._mark_cancelling(NULL, v_id, NULL, $3);
			END IF;
			RETURN QUERY SELECT v_id,
				CASE WHEN v_before > 0 THEN 'already_requested' ELSE 'queued' END,
				format('cancellation %s, %s', c.cancellation_id, c.state);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			IF v_state IN ('57014', '57P01') THEN
				RAISE;
			END IF;
			RETURN QUERY SELECT v_id,
				CASE v_state WHEN 'ZA002' THEN 'window_closed'
							 WHEN 'ZA003' THEN 'refund'
							 WHEN 'ZA005' THEN 'not_pending'
							 WHEN '22023' THEN 'invalid_id'
							 WHEN '22001' THEN 'invalid_id'
							 WHEN '21000' THEN 'several_orders'
							 ELSE 'error' END,
				format('%s (SQLSTATE %s)', v_msg, v_state);
		END;
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean, boolean) IS
	'Queue many cancellations at once; what cannot be cancelled is skipped and reported, one row per id; only_pending skips orders no longer pending';

/*
 * What the foreign key used to promise, checked on demand (after a
 * restore, or after a superuser worked around the guard): attempts whose
 * ledger row is missing, or that sent another id than their ledger row
 * sends.  None is the healthy answer.  Not for PUBLIC: it reads the ledger.
 */
CREATE FUNCTION alipayplus.check_ledger()
RETURNS TABLE (attempt_id bigint, cancellation_id bigint, problem text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT a.attempt_id, a.cancellation_id,
		CASE WHEN c.cancellation_id IS NULL THEN 'no ledger row'
			ELSE pg_catalog.format('sent %s %s, its ledger row sends %s %s',
				a.sent_field, a.sent_id, c.sent_field, c.sent_id) END
	FROM alipayplus.cancel_attempts a
	LEFT JOIN alipayplus.cancellations c ON c.cancellation_id OPERATOR(pg_catalog.=) a.cancellation_id
	WHERE c.cancellation_id IS NULL
	   OR a.sent_field OPERATOR(pg_catalog.<>) c.sent_field
	   OR a.sent_id OPERATOR(pg_catalog.<>) c.sent_id
	ORDER BY a.attempt_id;
END;
COMMENT ON FUNCTION alipayplus.check_ledger() IS
	'Attempts without their ledger row, or that sent another id than it (none when the ledger is whole)';
