/*
 * alipayplus_cancel--1.0.sql
 *	  Install script of the alipayplus_cancel extension.
 *
 * Functions live in the extension's schema (@extschema@, default public);
 * tables and internal functions in the schema "alipayplus".  Every object
 * is schema-qualified and every SECURITY DEFINER function pins
 * search_path = pg_catalog, pg_temp, so a hostile search_path cannot
 * redirect anything.  Nothing that holds data or signs is granted to
 * PUBLIC.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

CREATE SCHEMA alipayplus;
REVOKE ALL ON SCHEMA alipayplus FROM PUBLIC;
COMMENT ON SCHEMA alipayplus IS 'alipayplus_cancel: cancellation ledger, attempts, result policy';

/* ------------------------------------------------------------------
 * Tables
 * ------------------------------------------------------------------ */

CREATE TABLE alipayplus.cancellations (
	cancellation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_request_id text UNIQUE,
	payment_id text UNIQUE,
	state text NOT NULL DEFAULT 'CANCELLING'
		CHECK (state IN ('CANCELLING', 'CANCELLED')),
	initiated_at timestamptz,
	deadline timestamptz,
	attempt_count integer NOT NULL DEFAULT 0,
	retry_budget_start integer NOT NULL DEFAULT 0,
	last_result_status text,
	last_result_code text,
	last_result_message text,
	last_attempt_at timestamptz,
	next_attempt_at timestamptz,
	needs_attention boolean NOT NULL DEFAULT false,
	attention_reason text,
	requested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	requested_by name NOT NULL DEFAULT session_user,
	cancelled_at timestamptz,
	acquirer_id text,
	psp_id text,
	late_payment_status text,
	late_payment_code text,
	late_payment_at timestamptz,
	CHECK (payment_request_id IS NOT NULL OR payment_id IS NOT NULL),
	CHECK ((state = 'CANCELLED') = (cancelled_at IS NOT NULL)),
	CHECK (state = 'CANCELLING' OR NOT needs_attention)
);
CREATE INDEX cancellations_due ON alipayplus.cancellations (next_attempt_at)
	WHERE state = 'CANCELLING' AND NOT needs_attention;
COMMENT ON TABLE alipayplus.cancellations IS
	'One row per payment whose cancellation was requested; CANCELLING moves only to CANCELLED, which is final';

CREATE TABLE alipayplus.cancel_attempts (
	attempt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	cancellation_id bigint REFERENCES alipayplus.cancellations,
	sent_field text NOT NULL CHECK (sent_field IN ('paymentRequestId', 'paymentId')),
	sent_id text NOT NULL,
	request_time text NOT NULL,
	attempted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	result_status text NOT NULL CHECK (result_status IN ('S', 'F', 'U')),
	result_code text NOT NULL,
	result_message text,
	http_status integer,
	signature_verified boolean,
	latency_ms double precision,
	error_detail text,
	acquirer_id text,
	psp_id text,
	caller text NOT NULL
);
CREATE INDEX cancel_attempts_cancellation ON alipayplus.cancel_attempts (cancellation_id);
COMMENT ON TABLE alipayplus.cancel_attempts IS
	'One row per cancelPayment HTTP attempt; never key material or signatures';

/*
 * The built-in rows (builtin = true) come with the extension and are
 * read-only: an UPDATE of one is stored as a DBA row for the same code,
 * which takes precedence.  Only DBA rows are dumped by pg_dump, so that a
 * restore, which installs the built-in rows anew, keeps the DBA's choices.
 */
CREATE TABLE alipayplus.result_policy (
	result_code text NOT NULL,
	action text NOT NULL CHECK (action IN ('done', 'retry', 'attention')),
	note text,
	builtin boolean NOT NULL DEFAULT false,
	PRIMARY KEY (result_code, builtin),
	CHECK (action <> 'done' OR result_code = 'SUCCESS')
);
COMMENT ON TABLE alipayplus.result_policy IS
	'What to do after a result code: done (S only), retry, or attention (a person decides); DBA rows override the built-in ones';

INSERT INTO alipayplus.result_policy (result_code, action, note) VALUES
	('SUCCESS', 'done', 'cancellation succeeded'),
	('UNKNOWN_EXCEPTION', 'retry', 'U: call again with the same parameters'),
	('REQUEST_TRAFFIC_EXCEED_LIMIT', 'retry', 'U: traffic over limit, call again later'),
	('PROCESS_FAIL', 'attention', 'F: general business failure; Alipay+ says do not retry, contact connect_support@service.alipay.com'),
	('PARAM_ILLEGAL', 'attention', 'F: illegal parameters; the same request fails the same way, check the ids'),
	('ORDER_NOT_EXIST', 'attention', 'F: Alipay+ does not know the payment; check the id'),
	('CANCEL_WINDOW_EXCEED', 'attention', 'F: past the cancellable period (00:15 UTC+8 on T+1); refund instead'),
	('INVALID_SIGNATURE', 'retry', 'F: configuration; fix the key pair, retried on the slow schedule'),
	('KEY_NOT_FOUND', 'retry', 'F: configuration; register the key, retried on the slow schedule'),
	('INVALID_CLIENT', 'retry', 'F: configuration; check alipayplus.client_id, retried on the slow schedule'),
	('ACCESS_DENIED', 'retry', 'F: configuration; retried on the slow schedule'),
	('INVALID_API', 'retry', 'F: configuration; check alipayplus.cancel_path, retried on the slow schedule'),
	('NO_INTERFACE_DEF', 'retry', 'F: configuration; check alipayplus.cancel_path, retried on the slow schedule'),
	('METHOD_NOT_SUPPORTED', 'retry', 'F: configuration; retried on the slow schedule'),
	('MEDIA_TYPE_NOT_ACCEPTABLE', 'retry', 'F: configuration; retried on the slow schedule'),
	('local.timeout', 'retry', 'no answer in alipayplus.timeout_ms'),
	('local.connect_failed', 'retry', 'could not connect to the gateway'),
	('local.tls_failed', 'retry', 'TLS handshake or certificate verification failed'),
	('local.transport_error', 'retry', 'the connection failed during the exchange'),
	('local.response_too_large', 'retry', 'the response body exceeded 1 MiB'),
	('local.http_status', 'retry', 'the gateway answered with an HTTP status other than 200'),
	('local.bad_response', 'retry', 'the response body was not a cancelPayment result'),
	('local.bad_signature', 'retry', 'the response signature was missing in part or did not verify'),
	('local.client_id_mismatch', 'retry', 'the response named another Client-Id'),
	('local.unsigned_success', 'retry', 'an unsigned response claimed success');
UPDATE alipayplus.result_policy SET builtin = true;

CREATE FUNCTION alipayplus._result_policy_builtin()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		RAISE EXCEPTION USING
			ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('the built-in policy for %s cannot be deleted', OLD.result_code),
			HINT = 'Update it instead: the change is kept as a DBA row that overrides the built-in one.';
	END IF;
	INSERT INTO alipayplus.result_policy AS x (result_code, action, note, builtin)
	VALUES (NEW.result_code, NEW.action, NEW.note, false)
	ON CONFLICT (result_code, builtin) DO UPDATE
		SET action = excluded.action, note = excluded.note;
	RETURN NULL;
END;
$$;
CREATE TRIGGER result_policy_builtin BEFORE UPDATE OR DELETE ON alipayplus.result_policy
	FOR EACH ROW WHEN (OLD.builtin) EXECUTE FUNCTION alipayplus._result_policy_builtin();

CREATE TABLE alipayplus.order_binding (
	singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	orders regclass NOT NULL,
	request_id_column name NOT NULL,
	status_column name NOT NULL,
	cancelled_value text NOT NULL,
	cancelling_value text NOT NULL,
	payment_id_column name,
	initiated_at_column name,
	paid_value text,
	failed_value text,
	bound_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE alipayplus.order_binding IS
	'The user orders table that follows the ledger (set by alipayplus_bind_orders)';

CREATE TABLE alipayplus.known_refunds (
	refund_request_id text UNIQUE,
	refund_id text UNIQUE,
	noted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (refund_request_id IS NOT NULL OR refund_id IS NOT NULL)
);
COMMENT ON TABLE alipayplus.known_refunds IS
	'Ids known to be refunds, which cancelPayment must never be asked to cancel';

CREATE TABLE alipayplus.processor_runs (
	run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	started_at timestamptz NOT NULL,
	finished_at timestamptz NOT NULL,
	claimed integer NOT NULL,
	cancelled integer NOT NULL,
	retrying integer NOT NULL,
	attention integer NOT NULL,
	unanswered integer NOT NULL,
	busy integer NOT NULL,
	stopped_because text NOT NULL
);
COMMENT ON TABLE alipayplus.processor_runs IS
	'One summary row per alipayplus_process_cancellations() run that committed';

/* user data survives pg_dump */
SELECT pg_catalog.pg_extension_config_dump('alipayplus.cancellations', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.cancel_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.order_binding', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.result_policy', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.known_refunds', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.processor_runs', '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.cancellations', 'cancellation_id'), '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.cancel_attempts', 'attempt_id'), '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.processor_runs', 'run_id'), '');

/* ------------------------------------------------------------------
 * C functions
 * ------------------------------------------------------------------ */

CREATE FUNCTION alipayplus._check_ids(payment_id text, payment_request_id text)
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_check_ids'
LANGUAGE C VOLATILE;

CREATE FUNCTION alipayplus._check_config()
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_check_config'
LANGUAGE C VOLATILE;

CREATE FUNCTION alipayplus._call_cancel(payment_id text, payment_request_id text,
	OUT sent_field text, OUT sent_id text, OUT request_time text,
	OUT http_status integer, OUT result_status text, OUT result_code text,
	OUT result_message text, OUT acquirer_id text, OUT psp_id text,
	OUT signature_verified boolean, OUT latency_ms double precision,
	OUT error_detail text)
RETURNS record
AS 'MODULE_PATHNAME', 'alipayplus_call_cancel'
LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.alipayplus_signature(path text, client_id text,
	request_time text, body text)
RETURNS text
AS 'MODULE_PATHNAME', 'alipayplus_signature'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.alipayplus_signature(text, text, text, text) IS
	'Signature header value for a message, signed with alipayplus.private_key_file';

CREATE FUNCTION @extschema@.alipayplus_verify(path text, client_id text,
	response_time text, body text, signature text, public_key text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'alipayplus_verify'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.alipayplus_verify(text, text, text, text, text, text) IS
	'Whether signature (a Signature header value or its signature part) signs the message; public_key PEM defaults to alipayplus.public_key_file';

CREATE FUNCTION @extschema@.alipayplus_guard_cancelled()
RETURNS trigger
AS 'MODULE_PATHNAME', 'alipayplus_guard_cancelled'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.alipayplus_guard_cancelled() IS
	'Row trigger: (status column, cancelled value, cancelling values...) keeps cancelled rows cancelled';

/* ------------------------------------------------------------------
 * Cancel window
 * ------------------------------------------------------------------ */

CREATE FUNCTION @extschema@.alipayplus_cancel_deadline(initiated_at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN (pg_catalog.date_trunc('day', ($1 AT TIME ZONE 'UTC') + interval '8 hours')
		+ interval '1 day 15 minutes' - interval '8 hours') AT TIME ZONE 'UTC';
COMMENT ON FUNCTION @extschema@.alipayplus_cancel_deadline(timestamptz) IS
	'00:15 UTC+8 on the day after the UTC+8 calendar day of initiated_at; cancellation is possible strictly before it';

CREATE FUNCTION @extschema@.alipayplus_cancel_window_open(initiated_at timestamptz,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN $2 < @extschema@.alipayplus_cancel_deadline($1);
COMMENT ON FUNCTION @extschema@.alipayplus_cancel_window_open(timestamptz, timestamptz) IS
	'Whether a payment initiated at initiated_at can still be cancelled at time at';

/* ------------------------------------------------------------------
 * Ledger internals
 * ------------------------------------------------------------------ */

/* SQL type of a column, for casting parameters into it */
CREATE FUNCTION alipayplus._column_type(tbl regclass, col name)
RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0
			AND NOT a.attisdropped);

/*
 * The order column and value that identify a payment: its request id when
 * known, else its payment id when the binding has that column.  key_col is
 * NULL when neither applies.
 */
CREATE FUNCTION alipayplus._order_key(b alipayplus.order_binding, p_request_id text,
	p_payment_id text, OUT key_col name, OUT key_val text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN $2 IS NOT NULL THEN ($1).request_id_column
				WHEN $3 IS NOT NULL THEN ($1).payment_id_column END,
		   coalesce($2, $3)
$$;

/*
 * Lock the bound order row for an id and return what it holds.  order_found is
 * false when nothing is bound or no order row has the id.  With p_nowait, a
 * row locked by another transaction raises lock_not_available at once.
 *
 * Lock order: every path locks the order row before the ledger row, except
 * the processor, which claims ledger rows with SKIP LOCKED and then takes the
 * order row with NOWAIT, so it never waits while holding a ledger row.
 */
CREATE FUNCTION alipayplus._lock_order(p_payment_id text, p_request_id text,
	p_nowait boolean DEFAULT false,
	OUT order_found boolean, OUT status text, OUT request_id text,
	OUT payment_id text, OUT initiated_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	k record;
BEGIN
	order_found := false;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT * INTO k FROM alipayplus._order_key(b, p_request_id, p_payment_id);
	IF k.key_col IS NULL THEN
		RETURN;
	END IF;
	EXECUTE format('SELECT true, %I::text, %I::text, %s, %s FROM %s WHERE %I = $1::%s LIMIT 1 FOR UPDATE%s',
				   b.status_column, b.request_id_column,
				   CASE WHEN b.payment_id_column IS NULL THEN 'NULL::text'
						ELSE format('%I::text', b.payment_id_column) END,
				   CASE WHEN b.initiated_at_column IS NULL THEN 'NULL::timestamptz'
						ELSE format('%I::timestamptz', b.initiated_at_column) END,
				   b.orders, k.key_col,
				   alipayplus._column_type(b.orders, k.key_col),
				   CASE WHEN p_nowait THEN ' NOWAIT' ELSE '' END)
		INTO order_found, status, request_id, payment_id, initiated_at
		USING k.key_val;
	order_found := coalesce(order_found, false);
END;
$$;

/* Set the bound order's status, found by request id or payment id (no-op if unbound) */
CREATE FUNCTION alipayplus._set_order_status(p_request_id text, p_payment_id text,
	p_status text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	k record;
	status_type text;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR p_status IS NULL THEN
		RETURN;
	END IF;
	SELECT * INTO k FROM alipayplus._order_key(b, p_request_id, p_payment_id);
	IF k.key_col IS NULL THEN
		RETURN;
	END IF;
	status_type := alipayplus._column_type(b.orders, b.status_column);
	EXECUTE format('UPDATE %s SET %I = $1::%s WHERE %I = $2::%s AND %I IS DISTINCT FROM $1::%s',
				   b.orders, b.status_column, status_type,
				   k.key_col, alipayplus._column_type(b.orders, k.key_col),
				   b.status_column, status_type)
		USING p_status, k.key_val;
END;
$$;

/* Refuse ids known to be refunds */
CREATE FUNCTION alipayplus._refuse_refund(p_payment_id text, p_request_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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
 * the ledger row if needed; returns the ledger row, locked.  Refuses
 * refunds and payments past their cancel deadline before changing
 * anything.
 */
CREATE FUNCTION alipayplus._mark_cancelling(p_payment_id text, p_request_id text,
	p_initiated_at timestamptz)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	o record;
	c alipayplus.cancellations;
	v_request_id text := p_request_id;
	v_payment_id text := p_payment_id;
	v_initiated timestamptz;
BEGIN
	PERFORM alipayplus._check_ids(p_payment_id, p_request_id);
	PERFORM alipayplus._refuse_refund(p_payment_id, p_request_id);

	o := alipayplus._lock_order(p_payment_id, p_request_id);
	IF o.order_found THEN
		v_request_id := coalesce(v_request_id, o.request_id);
		v_payment_id := coalesce(v_payment_id, o.payment_id);
	END IF;

	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.payment_request_id = v_request_id OR x.payment_id = v_payment_id
	ORDER BY x.cancellation_id LIMIT 1
	FOR UPDATE;

	IF NOT FOUND THEN
		v_initiated := coalesce(p_initiated_at, o.initiated_at);
		IF v_initiated IS NOT NULL
		   AND NOT @extschema@.alipayplus_cancel_window_open(v_initiated, pg_catalog.now()) THEN
			RAISE EXCEPTION USING
				ERRCODE = 'ZA002',
				MESSAGE = format('payment %s can no longer be cancelled: its cancel window closed at %s',
								 coalesce(v_request_id, v_payment_id),
								 @extschema@.alipayplus_cancel_deadline(v_initiated)),
				DETAIL = format('The payment was initiated at %s; Alipay+ accepts cancelPayment until 00:15 UTC+8 on the next day.', v_initiated),
				HINT = 'Refund the payment instead.';
		END IF;

		INSERT INTO alipayplus.cancellations AS x
			(payment_request_id, payment_id, initiated_at, deadline, next_attempt_at)
		VALUES (v_request_id, v_payment_id, v_initiated,
				@extschema@.alipayplus_cancel_deadline(v_initiated), pg_catalog.now())
		ON CONFLICT DO NOTHING
		RETURNING * INTO c;

		IF NOT FOUND THEN
			/* a concurrent request created it and has committed */
			SELECT * INTO c FROM alipayplus.cancellations x
			WHERE x.payment_request_id = v_request_id OR x.payment_id = v_payment_id
			ORDER BY x.cancellation_id LIMIT 1
			FOR UPDATE;
		ELSE
			PERFORM pg_catalog.pg_notify('alipayplus_cancellations', c.cancellation_id::text);
		END IF;
	END IF;

	SELECT * INTO b FROM alipayplus.order_binding;
	IF o.order_found AND c.state = 'CANCELLING' AND o.status IS DISTINCT FROM b.cancelled_value THEN
		PERFORM alipayplus._set_order_status(o.request_id, o.payment_id, b.cancelling_value);
	ELSIF o.order_found AND c.state = 'CANCELLED' THEN
		PERFORM alipayplus._set_order_status(o.request_id, o.payment_id, b.cancelled_value);
	END IF;
	RETURN c;
END;
$$;

/*
 * Next retry delay: exponential from alipayplus.retry_base_ms (8 times
 * slower for F results), capped at alipayplus.retry_max_ms, with jitter
 * between half and all of it.  The settings carry units ("200ms", "15min"),
 * which the interval input understands.
 */
CREATE FUNCTION alipayplus._retry_delay(attempts integer, slow boolean)
RETURNS interval
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
RETURN least(current_setting('alipayplus.retry_max_ms')::interval,
			 current_setting('alipayplus.retry_base_ms')::interval
			 * CASE WHEN $2 THEN 8 ELSE 1 END
			 * power(2, least(greatest($1 - 1, 0), 30)))
	* (0.5 + random() * 0.5);

/*
 * Apply an attempt's result to the ledger row and the bound order:
 * S makes both CANCELLED; otherwise result_policy decides between a
 * retry after backoff and a flag for a person.
 */
CREATE FUNCTION alipayplus._apply_result(c alipayplus.cancellations,
	a alipayplus.cancel_attempts)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	p alipayplus.result_policy;
	act text;
	n integer;
	r alipayplus.cancellations;
	max_attempts integer := current_setting('alipayplus.max_attempts')::integer;
BEGIN
	IF a.result_status = 'S' THEN
		UPDATE alipayplus.cancellations x SET
			state = 'CANCELLED', cancelled_at = pg_catalog.now(),
			attempt_count = x.attempt_count + 1,
			last_result_status = a.result_status, last_result_code = a.result_code,
			last_result_message = a.result_message, last_attempt_at = a.attempted_at,
			next_attempt_at = NULL, needs_attention = false, attention_reason = NULL,
			acquirer_id = a.acquirer_id, psp_id = a.psp_id
		WHERE x.cancellation_id = c.cancellation_id
		RETURNING * INTO r;
		SELECT * INTO b FROM alipayplus.order_binding;
		IF FOUND THEN
			PERFORM alipayplus._set_order_status(r.payment_request_id, r.payment_id, b.cancelled_value);
		END IF;
		RETURN r;
	END IF;

	/* a DBA row (builtin = false) overrides the built-in one */
	SELECT * INTO p FROM alipayplus.result_policy x
	WHERE x.result_code = a.result_code
	ORDER BY x.builtin
	LIMIT 1;
	act := p.action;
	IF act IS NULL OR act = 'done' THEN
		act := CASE a.result_status WHEN 'U' THEN 'retry' ELSE 'attention' END;
	END IF;
	n := c.attempt_count + 1 - c.retry_budget_start;

	UPDATE alipayplus.cancellations x SET
		attempt_count = x.attempt_count + 1,
		last_result_status = a.result_status, last_result_code = a.result_code,
		last_result_message = a.result_message, last_attempt_at = a.attempted_at,
		needs_attention = (act = 'attention' OR n >= max_attempts),
		attention_reason = CASE
			WHEN act = 'attention' THEN
				format('%s %s: %s', a.result_status, a.result_code,
					   coalesce(p.note, 'unknown F code; Alipay+ refused the cancellation and a person must decide (connect_support@service.alipay.com)'))
			WHEN n >= max_attempts THEN
				format('no result after %s attempts (last: %s %s); contact Alipay+ support at connect_support@service.alipay.com',
					   n, a.result_status, a.result_code)
			END,
		next_attempt_at = CASE
			WHEN act = 'attention' OR n >= max_attempts THEN NULL
			ELSE pg_catalog.clock_timestamp()
				 + alipayplus._retry_delay(n, a.result_status = 'F')
			END
	WHERE x.cancellation_id = c.cancellation_id
	RETURNING * INTO r;
	RETURN r;
END;
$$;

/* One attempt for a locked ledger row: call, record, apply */
CREATE FUNCTION alipayplus._attempt(c alipayplus.cancellations, p_caller text)
RETURNS alipayplus.cancel_attempts
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	a alipayplus.cancel_attempts;
BEGIN
	/* paymentRequestId is the documented idempotency key: prefer it */
	IF c.payment_request_id IS NOT NULL THEN
		SELECT * INTO r FROM alipayplus._call_cancel(NULL, c.payment_request_id);
	ELSE
		SELECT * INTO r FROM alipayplus._call_cancel(c.payment_id, NULL);
	END IF;

	INSERT INTO alipayplus.cancel_attempts
		(cancellation_id, sent_field, sent_id, request_time, result_status,
		 result_code, result_message, http_status, signature_verified,
		 latency_ms, error_detail, acquirer_id, psp_id, caller)
	VALUES (c.cancellation_id, r.sent_field, r.sent_id, r.request_time,
			r.result_status, r.result_code, r.result_message, r.http_status,
			r.signature_verified, r.latency_ms, r.error_detail, r.acquirer_id,
			r.psp_id, p_caller)
	RETURNING * INTO a;

	PERFORM alipayplus._apply_result(c, a);
	RETURN a;
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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	c alipayplus.cancellations;
	a alipayplus.cancel_attempts;
BEGIN
	/* configuration problems are reported before anything is marked */
	PERFORM alipayplus._check_config();
	c := alipayplus._mark_cancelling($1, $2, NULL);

	IF c.state = 'CANCELLED' THEN
		/* already cancelled: report the verified success, call nothing */
		SELECT * INTO a FROM alipayplus.cancel_attempts x
		WHERE x.cancellation_id = c.cancellation_id AND x.result_status = 'S'
		ORDER BY x.attempt_id DESC LIMIT 1;
		RETURN QUERY SELECT 'S'::text, c.last_result_code, c.last_result_message,
			c.acquirer_id, c.psp_id, a.attempt_id, c.cancellation_id, c.state;
		RETURN;
	END IF;

	a := alipayplus._attempt(c, 'alipayplus_cancel_payment');
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = c.cancellation_id;
	RETURN QUERY SELECT a.result_status, a.result_code, a.result_message,
		a.acquirer_id, a.psp_id, a.attempt_id, c.cancellation_id, c.state;
END;
$$;
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
	'Transactional outbox: mark CANCELLING and queue the call, no network; alipayplus_process_cancellations() makes the call after commit';

CREATE FUNCTION @extschema@.alipayplus_process_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds')
RETURNS TABLE (run_id bigint, claimed integer, cancelled integer, retrying integer,
	attention integer, unanswered integer, busy integer, elapsed_ms double precision)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	v_start timestamptz := pg_catalog.clock_timestamp();
	v_done bigint[] := '{}';
	c alipayplus.cancellations;
	a alipayplus.cancel_attempts;
	n_claimed integer := 0;
	n_cancelled integer := 0;
	n_retrying integer := 0;
	n_attention integer := 0;
	n_unanswered integer := 0;
	n_consecutive integer := 0;
	n_busy integer := 0;
	v_stop text := 'nothing due';
	v_last_detail text;
	v_run bigint;
BEGIN
	IF $1 IS NULL OR $1 < 1 THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'max_count must be at least 1';
	END IF;
	IF $2 IS NULL OR $2 <= interval '0' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'time_budget must be positive';
	END IF;
	PERFORM alipayplus._check_config();

	LOOP
		IF n_claimed >= $1 THEN
			v_stop := 'max_count reached';
			EXIT;
		END IF;
		IF pg_catalog.clock_timestamp() - v_start >= $2 THEN
			v_stop := 'time budget used';
			EXIT;
		END IF;

		/*
		 * Claim a due row, then its bound order row without waiting; if the
		 * order is locked (a notification or request in progress), give
		 * both back by rolling back the subtransaction and try again in a
		 * later run.
		 */
		BEGIN
			SELECT * INTO c FROM alipayplus.cancellations x
			WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
				AND x.next_attempt_at <= pg_catalog.clock_timestamp()
				AND x.cancellation_id <> ALL (v_done)
			ORDER BY x.next_attempt_at, x.cancellation_id
			LIMIT 1
			FOR UPDATE SKIP LOCKED;
			IF NOT FOUND THEN
				v_stop := 'nothing due';
				EXIT;
			END IF;
			v_done := v_done || c.cancellation_id;
			PERFORM alipayplus._lock_order(c.payment_id, c.payment_request_id, true);
		EXCEPTION WHEN lock_not_available THEN
			n_busy := n_busy + 1;
			CONTINUE;
		END;

		n_claimed := n_claimed + 1;
		a := alipayplus._attempt(c, 'alipayplus_process_cancellations');

		IF a.result_code IN ('local.connect_failed', 'local.tls_failed', 'local.timeout') THEN
			n_unanswered := n_unanswered + 1;
			n_consecutive := n_consecutive + 1;
			v_last_detail := format('%s: %s', a.result_code, a.error_detail);
		ELSE
			n_consecutive := 0;
		END IF;

		SELECT * INTO c FROM alipayplus.cancellations x
		WHERE x.cancellation_id = c.cancellation_id;
		IF c.state = 'CANCELLED' THEN
			n_cancelled := n_cancelled + 1;
		ELSIF c.needs_attention THEN
			n_attention := n_attention + 1;
		ELSE
			n_retrying := n_retrying + 1;
		END IF;

		IF n_consecutive >= 3 AND n_unanswered = n_claimed THEN
			EXIT;
		END IF;
	END LOOP;

	IF n_claimed > 0 AND n_unanswered = n_claimed THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA004',
			MESSAGE = format('the Alipay+ gateway did not answer any of the %s attempts of this run', n_claimed),
			DETAIL = v_last_detail,
			HINT = 'Check alipayplus.gateway_url, alipayplus.ca_file and the network. The cancellations stay queued; the next run retries them.';
	END IF;

	INSERT INTO alipayplus.processor_runs AS x
		(started_at, finished_at, claimed, cancelled, retrying, attention,
		 unanswered, busy, stopped_because)
	VALUES (v_start, pg_catalog.clock_timestamp(), n_claimed, n_cancelled,
			n_retrying, n_attention, n_unanswered, n_busy, v_stop)
	RETURNING x.run_id INTO v_run;

	RETURN QUERY SELECT v_run, n_claimed, n_cancelled, n_retrying, n_attention,
		n_unanswered, n_busy,
		extract(epoch FROM pg_catalog.clock_timestamp() - v_start)::float8 * 1000;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval) IS
	'For pg_cron: call cancelPayment for due CANCELLING rows (SKIP LOCKED), bounded by max_count and time_budget';

CREATE FUNCTION @extschema@.alipayplus_requeue_cancellation(cancellation_id bigint)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c alipayplus.cancellations;
BEGIN
	UPDATE alipayplus.cancellations x SET
		needs_attention = false, attention_reason = NULL,
		retry_budget_start = x.attempt_count,
		next_attempt_at = pg_catalog.now()
	WHERE x.cancellation_id = $1 AND x.state = 'CANCELLING'
	RETURNING * INTO c;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'no_data_found',
			MESSAGE = format('no CANCELLING cancellation with id %s', $1);
	END IF;
	RETURN c;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_requeue_cancellation(bigint) IS
	'After a person fixed the cause: clear the flag and retry with a fresh attempt budget';

CREATE FUNCTION @extschema@.alipayplus_note_refund(refund_request_id text,
	refund_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF $1 IS NULL AND $2 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'give refund_request_id or refund_id';
	END IF;
	IF EXISTS (SELECT 1 FROM alipayplus.cancellations x
			   WHERE x.payment_request_id IN ($1, $2) OR x.payment_id IN ($1, $2)) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA003',
			MESSAGE = format('%s already has a cancellation as a payment', coalesce($1, $2));
	END IF;
	INSERT INTO alipayplus.known_refunds (refund_request_id, refund_id)
	VALUES ($1, $2) ON CONFLICT DO NOTHING;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_note_refund(text, text) IS
	'Record a refund id so that it can never be sent to cancelPayment';

CREATE FUNCTION @extschema@.alipayplus_apply_payment_result(payment_request_id text,
	result_status text, result_code text DEFAULT NULL, payment_id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	o record;
	c alipayplus.cancellations;
BEGIN
	IF $1 IS NULL AND $4 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'either payment_request_id or payment_id must be given';
	END IF;
	IF $2 IS NULL OR $2 NOT IN ('S', 'F', 'U') THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = format('result_status must be S, F or U, not %s', coalesce(quote_literal($2), 'NULL'));
	END IF;

	/* the order row lock serializes this with a concurrent cancel request */
	o := alipayplus._lock_order($4, $1);

	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.payment_request_id = coalesce($1, o.request_id)
	   OR x.payment_id = coalesce($4, o.payment_id)
	ORDER BY x.cancellation_id LIMIT 1
	FOR UPDATE;
	IF FOUND THEN
		UPDATE alipayplus.cancellations x SET
			late_payment_status = $2, late_payment_code = $3,
			late_payment_at = pg_catalog.now()
		WHERE x.cancellation_id = c.cancellation_id;
		RETURN 'recorded_late';
	END IF;

	IF NOT o.order_found THEN
		RETURN 'no_order';
	END IF;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF o.status IN (b.cancelled_value, b.cancelling_value) THEN
		RETURN 'ignored_order_cancelling';
	END IF;
	IF $2 = 'S' AND b.paid_value IS NOT NULL THEN
		PERFORM alipayplus._set_order_status(o.request_id, o.payment_id, b.paid_value);
		RETURN 'applied';
	ELSIF $2 = 'F' AND b.failed_value IS NOT NULL THEN
		PERFORM alipayplus._set_order_status(o.request_id, o.payment_id, b.failed_value);
		RETURN 'applied';
	END IF;
	RETURN 'unchanged';
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_apply_payment_result(text, text, text, text) IS
	'Apply a payment notification or inquiryPayment result: moves a bound order only if no cancellation was requested';

/* Statement trigger refusing TRUNCATE while guarded rows exist */
CREATE FUNCTION @extschema@.alipayplus_guard_truncate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	guarded boolean;
BEGIN
	EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I::text = ANY ($1))',
				   TG_RELID::regclass, TG_ARGV[0])
		INTO guarded USING TG_ARGV[1:];
	IF guarded THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA001',
			MESSAGE = format('cannot truncate table %s: it has rows whose %s is %s',
							 TG_RELID::regclass, TG_ARGV[0], array_to_string(TG_ARGV[1:], ' or ')),
			DETAIL = 'Payments whose cancellation was requested must be kept.';
	END IF;
	RETURN NULL;
END;
$$;

CREATE FUNCTION @extschema@.alipayplus_bind_orders(orders regclass,
	request_id_column name, status_column name, cancelled_value text,
	cancelling_value text, payment_id_column name DEFAULT NULL,
	initiated_at_column name DEFAULT NULL, paid_value text DEFAULT NULL,
	failed_value text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $$
DECLARE
	col name;
	val text;
BEGIN
	IF $1 IS NULL OR $2 IS NULL OR $3 IS NULL OR $4 IS NULL OR $5 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'orders, request_id_column, status_column, cancelled_value and cancelling_value are required';
	END IF;
	IF $4 = $5 THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'cancelled_value and cancelling_value must differ';
	END IF;
	FOREACH col IN ARRAY ARRAY[$2, $3, $6, $7] LOOP
		IF col IS NOT NULL AND alipayplus._column_type($1, col) IS NULL THEN
			RAISE EXCEPTION USING ERRCODE = 'undefined_column',
				MESSAGE = format('column %I does not exist in table %s', col, $1);
		END IF;
	END LOOP;

	/* the values must be valid for the status column's type (an enum, say) */
	FOREACH val IN ARRAY ARRAY[$4, $5, $8, $9] LOOP
		IF val IS NOT NULL THEN
			EXECUTE format('SELECT $1::%s', alipayplus._column_type($1, $3)) USING val;
		END IF;
	END LOOP;

	INSERT INTO alipayplus.order_binding AS x
		(orders, request_id_column, status_column, cancelled_value,
		 cancelling_value, payment_id_column, initiated_at_column, paid_value,
		 failed_value)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
	ON CONFLICT (singleton) DO UPDATE SET
		orders = excluded.orders, request_id_column = excluded.request_id_column,
		status_column = excluded.status_column, cancelled_value = excluded.cancelled_value,
		cancelling_value = excluded.cancelling_value,
		payment_id_column = excluded.payment_id_column,
		initiated_at_column = excluded.initiated_at_column,
		paid_value = excluded.paid_value, failed_value = excluded.failed_value,
		bound_at = pg_catalog.now();

	EXECUTE format('DROP TRIGGER IF EXISTS alipayplus_guard_cancelled ON %s', $1);
	EXECUTE format('CREATE TRIGGER alipayplus_guard_cancelled BEFORE UPDATE OR DELETE ON %s '
				   'FOR EACH ROW EXECUTE FUNCTION @extschema@.alipayplus_guard_cancelled(%L, %L, %L)',
				   $1, $3, $4, $5);
	EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER alipayplus_guard_cancelled', $1);
	EXECUTE format('DROP TRIGGER IF EXISTS alipayplus_guard_truncate ON %s', $1);
	EXECUTE format('CREATE TRIGGER alipayplus_guard_truncate BEFORE TRUNCATE ON %s '
				   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.alipayplus_guard_truncate(%L, %L, %L)',
				   $1, $3, $4, $5);
	EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER alipayplus_guard_truncate', $1);
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text) IS
	'Make an orders table follow the ledger and attach the guard triggers';

/* The ledger guards itself the same way */
CREATE TRIGGER cancellations_guard BEFORE UPDATE OR DELETE ON alipayplus.cancellations
	FOR EACH ROW EXECUTE FUNCTION @extschema@.alipayplus_guard_cancelled('state', 'CANCELLED', 'CANCELLING');
ALTER TABLE alipayplus.cancellations ENABLE ALWAYS TRIGGER cancellations_guard;
CREATE TRIGGER cancellations_guard_truncate BEFORE TRUNCATE ON alipayplus.cancellations
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.alipayplus_guard_truncate('state', 'CANCELLED', 'CANCELLING');
ALTER TABLE alipayplus.cancellations ENABLE ALWAYS TRIGGER cancellations_guard_truncate;

/* ------------------------------------------------------------------
 * What needs a person
 * ------------------------------------------------------------------ */

CREATE VIEW alipayplus.attention AS
SELECT c.cancellation_id, c.payment_request_id, c.payment_id, c.state,
	c.attempt_count, c.last_result_status, c.last_result_code,
	c.last_result_message, c.last_attempt_at, c.requested_at, c.deadline,
	CASE
		WHEN c.needs_attention THEN c.attention_reason
		WHEN c.next_attempt_at < pg_catalog.now() - interval '10 minutes' THEN
			format('overdue since %s: alipayplus_process_cancellations() is not running or its runs fail (see cron.job_run_details)',
				   c.next_attempt_at)
		ELSE format('still CANCELLING after the cancel deadline %s; Alipay+ may answer CANCEL_WINDOW_EXCEED, consider a refund', c.deadline)
	END AS reason
FROM alipayplus.cancellations c
WHERE c.state = 'CANCELLING'
	AND (c.needs_attention OR c.deadline <= pg_catalog.now()
		 OR c.next_attempt_at < pg_catalog.now() - interval '10 minutes');
COMMENT ON VIEW alipayplus.attention IS 'Each cancellation a person must look at, and why';

/* ------------------------------------------------------------------
 * Privileges: nothing that holds data or signs is PUBLIC
 * ------------------------------------------------------------------ */

REVOKE ALL ON ALL TABLES IN SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_signature(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_cancel_payment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_cancel(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_requeue_cancellation(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_note_refund(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_apply_payment_result(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text) FROM PUBLIC;
