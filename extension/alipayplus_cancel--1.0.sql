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
	/* the one id this cancellation sends, on every attempt: its key */
	sent_field text NOT NULL CHECK (sent_field IN ('paymentRequestId', 'paymentId')),
	sent_id text NOT NULL,
	/* both ids as far as known (from the caller or the bound order) */
	payment_request_id text,
	payment_id text,
	state text NOT NULL DEFAULT 'CANCELLING'
		CHECK (state IN ('CANCELLING', 'CANCELLED')),
	initiated_at timestamptz,
	deadline timestamptz,
	attempt_count integer NOT NULL DEFAULT 0,
	retry_budget_start integer NOT NULL DEFAULT 0,
	unanswered_streak integer NOT NULL DEFAULT 0,
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
	UNIQUE (sent_field, sent_id),
	CHECK (sent_id = CASE sent_field WHEN 'paymentRequestId' THEN payment_request_id
									 ELSE payment_id END),
	CHECK ((state = 'CANCELLED') = (cancelled_at IS NOT NULL)),
	CHECK (needs_attention = (attention_reason IS NOT NULL)),
	CHECK (state = 'CANCELLING' OR next_attempt_at IS NULL)
);
CREATE INDEX cancellations_due ON alipayplus.cancellations (next_attempt_at)
	WHERE state = 'CANCELLING' AND NOT needs_attention;
CREATE INDEX cancellations_request_id ON alipayplus.cancellations (payment_request_id);
CREATE INDEX cancellations_payment_id ON alipayplus.cancellations (payment_id);
COMMENT ON TABLE alipayplus.cancellations IS
	'One row per payment whose cancellation was requested, keyed by the one id it sends; CANCELLING moves only to CANCELLED, which is final';

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
	('UNKNOWN_EXCEPTION', 'retry', 'unknown result; called again with the same parameters'),
	('REQUEST_TRAFFIC_EXCEED_LIMIT', 'retry', 'traffic over limit; called again later'),
	('PROCESS_FAIL', 'attention', 'general business failure; Alipay+ says do not retry: ask connect_support@service.alipay.com'),
	('PARAM_ILLEGAL', 'attention', 'illegal parameters; the same request fails the same way: check the ids'),
	('ORDER_NOT_EXIST', 'attention', 'Alipay+ does not know the payment: check the id'),
	('CANCEL_WINDOW_EXCEED', 'attention', 'past the cancellable period (00:15 UTC+8 on T+1): refund instead'),
	('INVALID_SIGNATURE', 'retry', 'configuration: fix the key pair, retried on the slow schedule'),
	('KEY_NOT_FOUND', 'retry', 'configuration: register the key, retried on the slow schedule'),
	('INVALID_CLIENT', 'retry', 'configuration: check alipayplus.client_id, retried on the slow schedule'),
	('ACCESS_DENIED', 'retry', 'configuration: retried on the slow schedule'),
	('INVALID_API', 'retry', 'configuration: check alipayplus.cancel_path, retried on the slow schedule'),
	('NO_INTERFACE_DEF', 'retry', 'configuration: check alipayplus.cancel_path, retried on the slow schedule'),
	('METHOD_NOT_SUPPORTED', 'retry', 'configuration: retried on the slow schedule'),
	('MEDIA_TYPE_NOT_ACCEPTABLE', 'retry', 'configuration: retried on the slow schedule'),
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
	initiated_at_time_zone text,
	paid_value text,
	failed_value text,
	bound_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE alipayplus.order_binding IS
	'The user orders table that follows the ledger (set by alipayplus_bind_orders)';

/*
 * The tables of the bound tree whose rows have been checked and which
 * carry the guards (kept by _attach_guards; a table that leaves the tree
 * leaves this list, and is checked again if it comes back).  Not dumped:
 * it names tables by OID.
 */
CREATE TABLE alipayplus.guarded_tables (
	relid oid PRIMARY KEY
);

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

CREATE FUNCTION alipayplus._id_problem(id text)
RETURNS text
AS 'MODULE_PATHNAME', 'alipayplus_id_problem'
LANGUAGE C IMMUTABLE STRICT;

/*
 * Run a query on a user table as that table's owner (src/orders.c); a
 * param named in param_columns takes that column's type; ledger_write
 * ({field, id, status}) marks the ledger's own status write
 */
CREATE FUNCTION alipayplus._order_exec(tbl regclass, query text, params text[],
	param_columns name[] DEFAULT NULL, ledger_write text[] DEFAULT NULL)
RETURNS SETOF text[]
AS 'MODULE_PATHNAME', 'alipayplus_order_exec'
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

CREATE FUNCTION @extschema@.alipayplus_guard_order()
RETURNS trigger
AS 'MODULE_PATHNAME', 'alipayplus_guard_order'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.alipayplus_guard_order() IS
	'Row trigger attached by alipayplus_bind_orders: the guard, fixed ids, and cancel states only through the ledger';

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
SET search_path = pg_catalog, pg_temp
RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0
			AND NOT a.attisdropped);

/* An id read from an order row: NULL when it is empty or blank */
CREATE FUNCTION alipayplus._clean_id(id text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN pg_catalog.btrim($1) = '' THEN NULL ELSE $1 END;

/* The order column that holds ids of a kind ('paymentRequestId' or 'paymentId') */
CREATE FUNCTION alipayplus._order_column(b alipayplus.order_binding, p_field text)
RETURNS name
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
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
SET search_path = pg_catalog, pg_temp
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
SET search_path = pg_catalog, pg_temp
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
		SELECT x[1] INTO now_status FROM alipayplus._order_exec(b.orders,
			format('SELECT %I::pg_catalog.text FROM %s WHERE %I OPERATOR(pg_catalog.=) $1',
				   b.status_column, b.orders, key_col),
			ARRAY[p_id], ARRAY[key_col]) x;
		IF NOT FOUND THEN
			RETURN;
		END IF;
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
 * the ledger row if needed; returns the ledger row, locked.  The row is
 * keyed by the one id it sends: the request id when known (given, or read
 * from the bound order), else the payment id.  Refuses refunds and
 * payments past their cancel deadline before changing anything.
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
	v_lock_field text := CASE WHEN p_request_id IS NOT NULL THEN 'paymentRequestId' ELSE 'paymentId' END;
	v_lock_id text := coalesce(p_request_id, p_payment_id);
	v_request_id text := p_request_id;
	v_payment_id text := p_payment_id;
	v_field text;
	v_id text;
	v_initiated timestamptz;
BEGIN
	PERFORM alipayplus._check_ids(p_payment_id, p_request_id);

	o := alipayplus._lock_order(v_lock_field, v_lock_id);
	IF o.order_found THEN
		v_request_id := coalesce(v_request_id, o.request_id);
		v_payment_id := coalesce(v_payment_id, o.payment_id);
	END IF;
	PERFORM alipayplus._refuse_refund(v_payment_id, v_request_id);
	IF v_request_id IS NOT NULL THEN
		v_field := 'paymentRequestId';
		v_id := v_request_id;
	ELSE
		v_field := 'paymentId';
		v_id := v_payment_id;
	END IF;

	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.sent_field = v_field AND x.sent_id = v_id
	FOR UPDATE;

	IF NOT FOUND THEN
		v_initiated := coalesce(p_initiated_at, o.initiated_at);
		IF v_initiated IS NOT NULL
		   AND NOT @extschema@.alipayplus_cancel_window_open(v_initiated, pg_catalog.now()) THEN
			RAISE EXCEPTION USING
				ERRCODE = 'ZA002',
				MESSAGE = format('payment %s can no longer be cancelled: its cancel window closed at %s',
								 v_id, @extschema@.alipayplus_cancel_deadline(v_initiated)),
				DETAIL = format('The payment was initiated at %s; Alipay+ accepts cancelPayment until 00:15 UTC+8 on the next day.', v_initiated),
				HINT = 'Refund the payment instead.';
		END IF;

		INSERT INTO alipayplus.cancellations AS x
			(sent_field, sent_id, payment_request_id, payment_id, initiated_at,
			 deadline, next_attempt_at)
		VALUES (v_field, v_id, v_request_id, v_payment_id, v_initiated,
				@extschema@.alipayplus_cancel_deadline(v_initiated), pg_catalog.now())
		ON CONFLICT (sent_field, sent_id) DO NOTHING
		RETURNING * INTO c;

		IF NOT FOUND THEN
			/* a concurrent request created it and has committed */
			SELECT * INTO c FROM alipayplus.cancellations x
			WHERE x.sent_field = v_field AND x.sent_id = v_id
			FOR UPDATE;
		ELSE
			PERFORM pg_catalog.pg_notify('alipayplus_cancellations', c.cancellation_id::text);
		END IF;
	END IF;

	IF o.order_found THEN
		SELECT * INTO b FROM alipayplus.order_binding;
		IF c.state = 'CANCELLED' THEN
			PERFORM alipayplus._set_order_status(v_lock_field, v_lock_id, b.cancelled_value,
												 c.sent_field, c.sent_id);
		ELSIF o.status IS DISTINCT FROM b.cancelled_value THEN
			PERFORM alipayplus._set_order_status(v_lock_field, v_lock_id, b.cancelling_value,
												 c.sent_field, c.sent_id);
		END IF;
	END IF;
	RETURN c;
END;
$$;

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
SET search_path = pg_catalog, pg_temp
RETURN pg_catalog.make_interval(secs => least(
			extract(epoch FROM current_setting('alipayplus.retry_max_ms')::interval)::float8,
			extract(epoch FROM current_setting('alipayplus.retry_base_ms')::interval)::float8
			* CASE WHEN $2 THEN 8 ELSE 1 END
			* power(2::float8, least(greatest(coalesce($1, 1) - 1, 0), 60)))
	* (0.5 + random() * 0.5));

/* Record one attempt: what _call_cancel returned */
CREATE FUNCTION alipayplus._record_attempt(c alipayplus.cancellations, r record,
	p_caller text)
RETURNS alipayplus.cancel_attempts
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a alipayplus.cancel_attempts;
BEGIN
	INSERT INTO alipayplus.cancel_attempts AS x
		(cancellation_id, sent_field, sent_id, request_time, result_status,
		 result_code, result_message, http_status, signature_verified,
		 latency_ms, error_detail, acquirer_id, psp_id, caller)
	VALUES (c.cancellation_id, r.sent_field, r.sent_id, r.request_time,
			r.result_status, r.result_code, r.result_message, r.http_status,
			r.signature_verified, r.latency_ms, r.error_detail, r.acquirer_id,
			r.psp_id, p_caller)
	RETURNING * INTO a;
	RETURN a;
END;
$$;

/* Whether an attempt got no answer at all from the gateway */
CREATE FUNCTION alipayplus._unanswered(code text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
RETURN $1 IN ('local.connect_failed', 'local.tls_failed', 'local.timeout');

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
			attempt_count = x.attempt_count + 1, unanswered_streak = 0,
			last_result_status = a.result_status, last_result_code = a.result_code,
			last_result_message = a.result_message, last_attempt_at = a.attempted_at,
			next_attempt_at = NULL, needs_attention = false, attention_reason = NULL,
			acquirer_id = a.acquirer_id, psp_id = a.psp_id
		WHERE x.cancellation_id = c.cancellation_id
		RETURNING * INTO r;
		SELECT * INTO b FROM alipayplus.order_binding;
		IF FOUND THEN
			PERFORM alipayplus._set_order_status(r.sent_field, r.sent_id, b.cancelled_value);
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
		unanswered_streak = CASE WHEN alipayplus._unanswered(a.result_code)
								 THEN x.unanswered_streak + 1 ELSE 0 END,
		last_result_status = a.result_status, last_result_code = a.result_code,
		last_result_message = a.result_message, last_attempt_at = a.attempted_at,
		needs_attention = (act = 'attention' OR n >= max_attempts),
		attention_reason = CASE
			WHEN act = 'attention' AND p.note IS NOT NULL THEN
				format('%s %s from Alipay+: %s', a.result_status, a.result_code, p.note)
			WHEN act = 'attention' THEN
				format('%s %s from Alipay+, a code the result policy does not know: Alipay+ refused the cancellation and a person must decide (see last_result_message; connect_support@service.alipay.com)',
					   a.result_status, a.result_code)
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

/*
 * An attempt whose result could not be applied (the order's trigger or
 * CHECK refused it, say): the ledger keeps what Alipay+ said and a person
 * is asked to look.  A verified S still makes the ledger row CANCELLED:
 * Alipay+ has cancelled the payment, whatever the order table thinks.
 */
CREATE FUNCTION alipayplus._result_not_applied(c alipayplus.cancellations,
	a alipayplus.cancel_attempts, p_error text)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r alipayplus.cancellations;
BEGIN
	UPDATE alipayplus.cancellations x SET
		state = CASE WHEN a.result_status = 'S' THEN 'CANCELLED' ELSE x.state END,
		cancelled_at = CASE WHEN a.result_status = 'S' THEN pg_catalog.now() END,
		acquirer_id = CASE WHEN a.result_status = 'S' THEN a.acquirer_id ELSE x.acquirer_id END,
		psp_id = CASE WHEN a.result_status = 'S' THEN a.psp_id ELSE x.psp_id END,
		attempt_count = x.attempt_count + 1,
		unanswered_streak = 0,
		last_result_status = a.result_status, last_result_code = a.result_code,
		last_result_message = a.result_message, last_attempt_at = a.attempted_at,
		next_attempt_at = NULL,
		needs_attention = true,
		attention_reason = CASE WHEN a.result_status = 'S' THEN
			format('Alipay+ cancelled the payment (verified S, attempt %s), but the bound order could not be updated: %s; fix that, then run alipayplus_requeue_cancellation(%s)',
				   a.attempt_id, p_error, c.cancellation_id)
			ELSE
			format('Alipay+ answered %s %s, but the result could not be applied: %s; fix that, then run alipayplus_requeue_cancellation(%s)',
				   a.result_status, a.result_code, p_error, c.cancellation_id)
			END
	WHERE x.cancellation_id = c.cancellation_id
	RETURNING * INTO r;
	RETURN r;
END;
$$;

/*
 * One attempt for a locked ledger row: call, record, apply.  The call is
 * made outside any subtransaction (an interrupt must end the statement);
 * recording and applying its result run in one, so that a failure there
 * leaves the answer recorded and the row flagged instead of erasing it.
 */
CREATE FUNCTION alipayplus._attempt(c alipayplus.cancellations, p_caller text)
RETURNS alipayplus.cancel_attempts
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	a alipayplus.cancel_attempts;
	v_msg text;
	v_state text;
BEGIN
	IF c.sent_field = 'paymentRequestId' THEN
		SELECT * INTO r FROM alipayplus._call_cancel(NULL, c.sent_id);
	ELSE
		SELECT * INTO r FROM alipayplus._call_cancel(c.sent_id, NULL);
	END IF;

	BEGIN
		a := alipayplus._record_attempt(c, r, p_caller);
		PERFORM alipayplus._apply_result(c, a);
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		/*
		 * Also a query cancel or statement_timeout while applying: the
		 * answer is kept and the run told to stop (see the processor).
		 */
		GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
		IF v_state = '57014' THEN
			PERFORM pg_catalog.set_config('alipayplus_cancel.interrupted', 'true', true);
		END IF;
		a := alipayplus._record_attempt(c, r, p_caller);
		c := alipayplus._result_not_applied(c, a,
			format('%s (SQLSTATE %s)', v_msg, v_state));
		RAISE WARNING USING MESSAGE = c.attention_reason;
	END;
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
		/* already cancelled: report its own verified success, call nothing */
		SELECT * INTO a FROM alipayplus.cancel_attempts x
		WHERE x.cancellation_id = c.cancellation_id AND x.result_status = 'S'
		ORDER BY x.attempt_id DESC LIMIT 1;
		RETURN QUERY SELECT 'S'::text, a.result_code, a.result_message,
			a.acquirer_id, a.psp_id, a.attempt_id, c.cancellation_id, c.state;
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
	'Transactional outbox: mark CANCELLING and queue the call, no network; the processor makes the call after commit';

/*
 * The processor.  Claims due rows one at a time (SKIP LOCKED), takes the
 * bound order row without waiting, calls, records and applies.  A row
 * whose order cannot be read or whose result cannot be applied is flagged
 * for a person and the run goes on; an unanswered attempt is kept and the
 * row backs off on its own.  continue_run adds this run's counts to an
 * earlier run's row (alipayplus_run_cancellations uses it).
 */
CREATE FUNCTION @extschema@.alipayplus_process_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds', continue_run bigint DEFAULT NULL)
RETURNS TABLE (run_id bigint, claimed integer, cancelled integer, retrying integer,
	attention integer, unanswered integer, busy integer, elapsed_ms numeric,
	last_error text)
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
	v_claim_error text;
	v_last_error text;
	v_run bigint;
	v_statement_timeout interval := current_setting('statement_timeout')::interval;
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
		IF v_statement_timeout > interval '0'
		   AND pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()
			   > v_statement_timeout - interval '500 ms' THEN
			v_stop := 'statement_timeout near';
			EXIT;
		END IF;

		/*
		 * Claim a due row, then its bound order row without waiting; if the
		 * order is locked (a notification or request in progress), give
		 * both back by rolling back the subtransaction and try again in a
		 * later run.  Any other trouble with the order is this row's
		 * problem, not the run's.
		 */
		v_claim_error := NULL;
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
			PERFORM alipayplus._lock_order(c.sent_field, c.sent_id, true);
		EXCEPTION
			WHEN lock_not_available THEN
				n_busy := n_busy + 1;
				CONTINUE;
			WHEN OTHERS THEN
				GET STACKED DIAGNOSTICS v_claim_error = MESSAGE_TEXT;
		END;

		n_claimed := n_claimed + 1;
		IF v_claim_error IS NOT NULL THEN
			UPDATE alipayplus.cancellations x SET
				needs_attention = true, next_attempt_at = NULL,
				attention_reason = format('the bound order cannot be used: %s; fix the order row, then run alipayplus_requeue_cancellation(%s)',
										  v_claim_error, x.cancellation_id)
			WHERE x.cancellation_id = c.cancellation_id
				AND x.state = 'CANCELLING' AND NOT x.needs_attention
				AND x.cancellation_id IN (SELECT y.cancellation_id FROM alipayplus.cancellations y
										  WHERE y.cancellation_id = c.cancellation_id
										  FOR UPDATE SKIP LOCKED);
			n_attention := n_attention + 1;
			CONTINUE;
		END IF;

		a := alipayplus._attempt(c, 'alipayplus_process_cancellations');
		IF alipayplus._unanswered(a.result_code) THEN
			n_unanswered := n_unanswered + 1;
			n_consecutive := n_consecutive + 1;
			v_last_error := format('%s: %s', a.result_code, a.error_detail);
		ELSE
			n_consecutive := 0;
		END IF;

		SELECT * INTO c FROM alipayplus.cancellations x
		WHERE x.cancellation_id = c.cancellation_id;
		IF c.needs_attention THEN
			n_attention := n_attention + 1;
		ELSIF c.state = 'CANCELLED' THEN
			n_cancelled := n_cancelled + 1;
		ELSE
			n_retrying := n_retrying + 1;
		END IF;

		/* a gateway that answers nothing: do not spend the run on it */
		IF n_consecutive >= 3 AND n_unanswered = n_claimed THEN
			v_stop := 'gateway not answering';
			EXIT;
		END IF;
	END LOOP;

	IF $3 IS NOT NULL THEN
		UPDATE alipayplus.processor_runs x SET
			finished_at = pg_catalog.clock_timestamp(),
			claimed = x.claimed + n_claimed, cancelled = x.cancelled + n_cancelled,
			retrying = x.retrying + n_retrying, attention = x.attention + n_attention,
			unanswered = x.unanswered + n_unanswered, busy = x.busy + n_busy,
			stopped_because = v_stop
		WHERE x.run_id = $3
		RETURNING x.run_id INTO v_run;
	END IF;
	IF v_run IS NULL THEN
		INSERT INTO alipayplus.processor_runs AS x
			(started_at, finished_at, claimed, cancelled, retrying, attention,
			 unanswered, busy, stopped_because)
		VALUES (v_start, pg_catalog.clock_timestamp(), n_claimed, n_cancelled,
				n_retrying, n_attention, n_unanswered, n_busy, v_stop)
		RETURNING x.run_id INTO v_run;
	END IF;

	RETURN QUERY SELECT v_run, n_claimed, n_cancelled, n_retrying, n_attention,
		n_unanswered, n_busy,
		round(extract(epoch FROM pg_catalog.clock_timestamp() - v_start) * 1000, 1),
		v_last_error;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) IS
	'Call cancelPayment for due CANCELLING rows (SKIP LOCKED) in the caller''s transaction, bounded by max_count and time_budget';

/*
 * The processor for pg_cron and long queues: commits after every
 * cancellation, so that a crash, a cancel or a timeout loses at most the
 * one in flight and other sessions see progress.  When the gateway
 * answered none of the run's attempts it raises ZA004 after committing
 * them, so that cron.job_run_details shows the run as failed.
 *
 * Not SECURITY DEFINER (a procedure that commits cannot be): it runs with
 * the caller's rights and needs only EXECUTE on the processor function.
 */
CREATE PROCEDURE @extschema@.alipayplus_run_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds')
LANGUAGE plpgsql
AS $$
DECLARE
	v_start timestamptz := pg_catalog.clock_timestamp();
	v_left interval;
	v_run bigint;
	r record;
	n integer := 0;
	n_unanswered integer := 0;
	v_last_error text;
BEGIN
	LOOP
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		v_left := time_budget - (pg_catalog.clock_timestamp() - v_start);
		EXIT WHEN n >= max_count OR v_left <= interval '0';
		SELECT * INTO r
		FROM @extschema@.alipayplus_process_cancellations(1, v_left, v_run) x;
		v_run := r.run_id;
		n := n + r.claimed;
		n_unanswered := n_unanswered + r.unanswered;
		v_last_error := coalesce(r.last_error, v_last_error);
		COMMIT;
		EXIT WHEN r.claimed = 0;
	END LOOP;
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	IF n > 0 AND n_unanswered = n THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA004',
			MESSAGE = format('the Alipay+ gateway did not answer any of the %s attempts of processor run %s', n, v_run),
			DETAIL = format('Last: %s. The attempts are recorded in alipayplus.cancel_attempts and each cancellation backs off on its own.', v_last_error),
			HINT = 'Check alipayplus.gateway_url, alipayplus.ca_file and the network.';
	END IF;
END;
$$;
COMMENT ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) IS
	'For pg_cron: the processor, committing after each cancellation; fails (ZA004) when the gateway answered nothing';

CREATE FUNCTION @extschema@.alipayplus_requeue_cancellation(cancellation_id bigint)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	c alipayplus.cancellations;
BEGIN
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'no_data_found',
			MESSAGE = format('no cancellation with id %s', $1);
	END IF;
	/* the order row first, then the ledger row, like every other path */
	PERFORM alipayplus._lock_order(c.sent_field, c.sent_id);
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1 FOR UPDATE;
	IF c.state = 'CANCELLED' AND NOT c.needs_attention THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s is CANCELLED; there is nothing to requeue', $1);
	END IF;

	IF c.state = 'CANCELLED' THEN
		/* Alipay+ cancelled it; only the bound order has to follow */
		SELECT * INTO b FROM alipayplus.order_binding;
		IF FOUND THEN
			PERFORM alipayplus._set_order_status(c.sent_field, c.sent_id, b.cancelled_value);
		END IF;
		UPDATE alipayplus.cancellations x SET
			needs_attention = false, attention_reason = NULL
		WHERE x.cancellation_id = $1
		RETURNING * INTO c;
		RETURN c;
	END IF;

	UPDATE alipayplus.cancellations x SET
		needs_attention = false, attention_reason = NULL,
		retry_budget_start = x.attempt_count, unanswered_streak = 0,
		next_attempt_at = pg_catalog.now()
	WHERE x.cancellation_id = $1
	RETURNING * INTO c;
	RETURN c;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_requeue_cancellation(bigint) IS
	'After a person fixed the cause: retry with a fresh attempt budget, or (for a CANCELLED row whose order could not follow) update the order';

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
	v_lock_field text := CASE WHEN $1 IS NOT NULL THEN 'paymentRequestId' ELSE 'paymentId' END;
	v_lock_id text := coalesce($1, $4);
	v_request_id text := $1;
	v_payment_id text := $4;
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
	o := alipayplus._lock_order(v_lock_field, v_lock_id);
	IF o.order_found THEN
		v_request_id := coalesce(v_request_id, o.request_id);
		v_payment_id := coalesce(v_payment_id, o.payment_id);
	END IF;

	/* the payment's own cancellation: by its request id, or by its payment id
	   when that cancellation knows no other request id */
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE (x.sent_field = 'paymentRequestId' AND x.sent_id = v_request_id)
	   OR (x.sent_field = 'paymentId' AND x.sent_id = v_payment_id
		   AND (v_request_id IS NULL OR x.payment_request_id IS NULL
				OR x.payment_request_id = v_request_id))
	ORDER BY x.sent_field DESC, x.cancellation_id LIMIT 1
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
		PERFORM alipayplus._set_order_status(v_lock_field, v_lock_id, b.paid_value);
		RETURN 'applied';
	ELSIF $2 = 'F' AND b.failed_value IS NOT NULL THEN
		PERFORM alipayplus._set_order_status(v_lock_field, v_lock_id, b.failed_value);
		RETURN 'applied';
	END IF;
	RETURN 'unchanged';
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_apply_payment_result(text, text, text, text) IS
	'Apply a payment notification or inquiryPayment result: moves a bound order only if no cancellation was requested';

/* ------------------------------------------------------------------
 * Guarding the bound orders table
 * ------------------------------------------------------------------ */

/*
 * Statement trigger refusing TRUNCATE while guarded rows exist.  It looks
 * at the table (and its children) as the table's owner.
 */
CREATE FUNCTION @extschema@.alipayplus_guard_truncate()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_NARGS < 2 OR TG_LEVEL <> 'STATEMENT' OR TG_OP <> 'TRUNCATE' THEN
		RAISE EXCEPTION USING ERRCODE = '39P01',
			MESSAGE = format('trigger %s on %s must be BEFORE TRUNCATE ... FOR EACH STATEMENT with arguments (status column, values...)',
							 TG_NAME, TG_RELID::regclass);
	END IF;
	/* only on the ledger and the bound tree: elsewhere it would read a table for its caller */
	IF TG_RELID <> 'alipayplus.cancellations'::regclass
	   AND NOT EXISTS (
		   WITH RECURSIVE tree(relid) AS (
			   SELECT b.orders::oid FROM alipayplus.order_binding b
			   UNION
			   SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
		   )
		   SELECT 1 FROM tree WHERE tree.relid = TG_RELID) THEN
		RAISE EXCEPTION USING ERRCODE = '39P01',
			MESSAGE = format('trigger %s on %s: alipayplus_guard_truncate() guards only the bound orders table and the ledger',
							 TG_NAME, TG_RELID::regclass),
			HINT = 'If the table is no longer bound, drop the trigger.';
	END IF;
	IF EXISTS (SELECT 1 FROM alipayplus._order_exec(TG_RELID::regclass,
			format('SELECT 1 FROM %s WHERE %I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]) LIMIT 1',
				   TG_RELID::regclass, TG_ARGV[0]),
			ARRAY[TG_ARGV[1:]::text])) THEN
		RAISE EXCEPTION USING
			ERRCODE = 'ZA001',
			MESSAGE = format('cannot truncate table %s: it has rows whose %s is %s',
							 TG_RELID::regclass, TG_ARGV[0], array_to_string(TG_ARGV[1:], ' or ')),
			DETAIL = 'Payments whose cancellation was requested must be kept.';
	END IF;
	RETURN NULL;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_guard_truncate() IS
	'Statement trigger: (status column, values...) refuses TRUNCATE while rows have one of the values';

/*
 * Why a column cannot be compared byte for byte, or NULL if it can.  The
 * guard compares stored values exactly; a type or collation whose
 * equality is looser (citext, a nondeterministic collation, a user type)
 * would let 'Cancelled' count as cancelled for the application but not
 * for the guard.
 */
CREATE FUNCTION alipayplus._not_bytewise(tbl regclass, col name)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	typ oid;
	base oid;
	coll oid;
BEGIN
	SELECT a.atttypid, a.attcollation INTO typ, coll FROM pg_catalog.pg_attribute a
	WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped;
	base := typ;
	WHILE (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = base) = 'd' LOOP
		base := (SELECT t.typbasetype FROM pg_catalog.pg_type t WHERE t.oid = base);
	END LOOP;
	IF (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = base) <> 'e'
	   AND base NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype,
						'int2'::regtype, 'int4'::regtype, 'int8'::regtype,
						'uuid'::regtype) THEN
		RETURN format('type %s', pg_catalog.format_type(typ, NULL));
	END IF;
	IF coll <> 0 AND NOT (SELECT c.collisdeterministic FROM pg_catalog.pg_collation c
						  WHERE c.oid = coll) THEN
		RETURN format('the nondeterministic collation %s',
					  (SELECT c.collname FROM pg_catalog.pg_collation c WHERE c.oid = coll));
	END IF;
	RETURN NULL;
END;
$$;

/*
 * Rows of tbl already in a cancel state must have come through the ledger:
 * a CANCELLING row without a cancellation would wait for ever (refused); a
 * CANCELLED row without a confirmed one is an order cancelled before the
 * extension (kept, with a warning: the guard keeps it CANCELLED).
 */
CREATE FUNCTION alipayplus._check_existing_rows(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	r text[];
	v_field text;
	v_id text;
	v_state text;
	n_stuck bigint := 0;
	n_legacy bigint := 0;
	example text;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	FOR r IN SELECT * FROM alipayplus._order_exec(tbl,
		format('SELECT %I::pg_catalog.text, %I::pg_catalog.text, %s FROM ONLY %s '
			   'WHERE %I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])',
			   b.status_column, b.request_id_column,
			   CASE WHEN b.payment_id_column IS NULL THEN 'NULL'
					ELSE format('%I::pg_catalog.text', b.payment_id_column) END,
			   tbl, b.status_column),
		ARRAY[ARRAY[b.cancelled_value, b.cancelling_value]::text])
	LOOP
		IF alipayplus._clean_id(r[2]) IS NOT NULL THEN
			v_field := 'paymentRequestId';
			v_id := r[2];
		ELSE
			v_field := 'paymentId';
			v_id := alipayplus._clean_id(r[3]);
		END IF;
		SELECT c.state INTO v_state FROM alipayplus.cancellations c
		WHERE c.sent_field = v_field AND c.sent_id = v_id;
		IF r[1] = b.cancelling_value AND v_state IS DISTINCT FROM 'CANCELLING' THEN
			n_stuck := n_stuck + 1;
			example := coalesce(example, v_id);
		ELSIF r[1] = b.cancelled_value AND v_state IS DISTINCT FROM 'CANCELLED' THEN
			n_legacy := n_legacy + 1;
		END IF;
	END LOOP;
	IF n_stuck > 0 THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = format('%s rows of %s are %s without a cancellation in progress in the ledger (for example %s)',
							 n_stuck, tbl, b.cancelling_value, coalesce(example, 'one without ids')),
			DETAIL = 'Under the guard they could only wait for a cancellation nobody asked Alipay+ for.',
			HINT = format('Set them back to their previous status first, then request their cancellation with alipayplus_request_cancel().');
	END IF;
	IF n_legacy > 0 THEN
		RAISE WARNING USING
			MESSAGE = format('%s rows of %s are %s without a cancellation confirmed by Alipay+ in the ledger',
							 n_legacy, tbl, b.cancelled_value),
			DETAIL = 'They were cancelled before the extension saw them; the guard keeps them cancelled.';
	END IF;
END;
$$;

/*
 * Attach the guard triggers to the bound table and every table below it
 * (partitions and inheritance children).  Row triggers on a partitioned
 * table are cloned to its partitions by PostgreSQL; plain inheritance
 * children get their own.  p_replace drops and recreates them (a new
 * binding); without it only missing triggers are added, so that the event
 * trigger below takes no lock on tables that are already guarded.
 */
CREATE FUNCTION alipayplus._attach_guards(p_replace boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $$
DECLARE
	b alipayplus.order_binding;
	t record;
	row_args text;
	trunc_args text;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	row_args := format('%L, %L, %L, %L, %L', b.status_column, b.cancelled_value,
					   b.cancelling_value, b.request_id_column,
					   coalesce(b.payment_id_column, ''));
	trunc_args := format('%L, %L, %L', b.status_column, b.cancelled_value,
						 b.cancelling_value);
	IF p_replace THEN
		DELETE FROM alipayplus.guarded_tables;
	END IF;
	/* the DDL below fires the event trigger: it must not come back here */
	PERFORM pg_catalog.set_config('alipayplus_cancel.attaching', 'on', true);

	FOR t IN
		WITH RECURSIVE tree(relid) AS (
			SELECT b.orders::oid
			UNION
			SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
		)
		SELECT tree.relid, tree.relid::regclass AS rel, c.relispartition,
			tree.relid = b.orders::oid AS is_root,
			c.relpersistence = 't' AND c.relnamespace <> pg_catalog.pg_my_temp_schema() AS others_temp,
			EXISTS (SELECT 1 FROM alipayplus.guarded_tables g WHERE g.relid = tree.relid) AS known,
			EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
					WHERE g.tgrelid = tree.relid AND g.tgname = 'alipayplus_guard_order') AS has_row,
			EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
					WHERE g.tgrelid = tree.relid AND g.tgname = 'alipayplus_guard_truncate') AS has_trunc
		FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid
		ORDER BY tree.relid = b.orders::oid DESC
	LOOP
		IF t.others_temp THEN
			/* another session's temporary table: out of reach, and gone with it */
			RAISE WARNING 'temporary table % of another session below the bound orders table is not guarded', t.rel;
			CONTINUE;
		END IF;
		/* a table that joins the tree brings its rows under the guard */
		IF NOT p_replace AND NOT t.known THEN
			PERFORM alipayplus._check_existing_rows(t.rel);
		END IF;
		/* row guard: its own on the root and on children that are not partitions */
		IF t.is_root OR NOT t.relispartition THEN
			IF p_replace OR NOT t.has_row THEN
				EXECUTE format('DROP TRIGGER IF EXISTS alipayplus_guard_order ON %s', t.rel);
				EXECUTE format('CREATE TRIGGER alipayplus_guard_order AFTER INSERT OR UPDATE OR DELETE ON %s '
							   'FOR EACH ROW EXECUTE FUNCTION @extschema@.alipayplus_guard_order(%s)',
							   t.rel, row_args);
				EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER alipayplus_guard_order', t.rel);
			END IF;
		END IF;
		IF p_replace OR NOT t.has_trunc THEN
			EXECUTE format('DROP TRIGGER IF EXISTS alipayplus_guard_truncate ON %s', t.rel);
			EXECUTE format('CREATE TRIGGER alipayplus_guard_truncate BEFORE TRUNCATE ON %s '
						   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.alipayplus_guard_truncate(%s)',
						   t.rel, trunc_args);
			EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER alipayplus_guard_truncate', t.rel);
		END IF;
		IF NOT t.known OR p_replace THEN
			INSERT INTO alipayplus.guarded_tables VALUES (t.relid) ON CONFLICT DO NOTHING;
		END IF;
	END LOOP;

	/* tables that left the tree must be checked again if they come back */
	DELETE FROM alipayplus.guarded_tables g
	WHERE NOT EXISTS (
		WITH RECURSIVE tree(relid) AS (
			SELECT b.orders::oid
			UNION
			SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
		)
		SELECT 1 FROM tree WHERE tree.relid = g.relid);

	/* the clones on partitions must fire under session_replication_role too */
	FOR t IN
		WITH RECURSIVE tree(relid) AS (
			SELECT b.orders::oid
			UNION
			SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
		)
		SELECT g.tgrelid::regclass AS rel FROM pg_catalog.pg_trigger g
		JOIN tree ON tree.relid = g.tgrelid
		JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
		WHERE g.tgname = 'alipayplus_guard_order' AND g.tgenabled <> 'A'
			AND NOT (c.relpersistence = 't' AND c.relnamespace <> pg_catalog.pg_my_temp_schema())
	LOOP
		EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER alipayplus_guard_order', t.rel);
	END LOOP;
	PERFORM pg_catalog.set_config('alipayplus_cancel.attaching', 'off', true);
END;
$$;

/* New partitions and children of the bound table get their guards at once */
CREATE FUNCTION alipayplus._guard_new_tables()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	/*
	 * A restore (pg_dump's script, pg_restore), run by a superuser, turns
	 * check_function_bodies off and brings the triggers itself: stay out of
	 * its way.  Anybody else gets the guards whatever that setting says.
	 */
	IF (current_setting('check_function_bodies') = 'on'
		OR NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user))
	   AND current_setting('alipayplus_cancel.attaching', true) IS DISTINCT FROM 'on'
	   AND EXISTS (SELECT 1 FROM alipayplus.order_binding) THEN
		PERFORM alipayplus._attach_guards(false);
	END IF;
END;
$$;
CREATE EVENT TRIGGER alipayplus_guard_new_tables ON ddl_command_end
	WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
	EXECUTE FUNCTION alipayplus._guard_new_tables();
ALTER EVENT TRIGGER alipayplus_guard_new_tables ENABLE ALWAYS;

CREATE FUNCTION @extschema@.alipayplus_bind_orders(orders regclass,
	request_id_column name, status_column name, cancelled_value text,
	cancelling_value text, payment_id_column name DEFAULT NULL,
	initiated_at_column name DEFAULT NULL, paid_value text DEFAULT NULL,
	failed_value text DEFAULT NULL, initiated_at_time_zone text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $$
DECLARE
	col name;
	val text;
	v_kind "char";
	v_type text;
	v_attnum smallint;
	v_rel regclass;
	v_fits boolean;
BEGIN
	IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
		RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
			MESSAGE = 'only a superuser can bind an orders table',
			DETAIL = 'Binding attaches guard triggers and changes the extension''s configuration.';
	END IF;
	IF $1 IS NULL OR $2 IS NULL OR $3 IS NULL OR $4 IS NULL OR $5 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'orders, request_id_column, status_column, cancelled_value and cancelling_value are required';
	END IF;
	IF $4 = $5 THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'cancelled_value and cancelling_value must differ';
	END IF;
	SELECT c.relkind INTO v_kind FROM pg_catalog.pg_class c WHERE c.oid = $1;
	IF v_kind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
			MESSAGE = format('%s is not a table', $1);
	END IF;
	FOREACH col IN ARRAY ARRAY[$2, $3, $6, $7] LOOP
		IF col IS NOT NULL AND alipayplus._column_type($1, col) IS NULL THEN
			RAISE EXCEPTION USING ERRCODE = 'undefined_column',
				MESSAGE = format('column %I does not exist in table %s', col, $1);
		END IF;
	END LOOP;

	/* the guard compares values byte for byte: the columns must allow that */
	FOREACH col IN ARRAY ARRAY[$2, $3, $6] LOOP
		CONTINUE WHEN col IS NULL;
		val := alipayplus._not_bytewise($1, col);
		IF val IS NOT NULL THEN
			RAISE EXCEPTION USING ERRCODE = 'datatype_mismatch',
				MESSAGE = format('column %I of table %s has %s, whose equality is not exact', col, $1, val),
				DETAIL = 'The guard compares stored values exactly; a looser equality would let other spellings of the values slip past it.',
				HINT = 'Use text, varchar, char(n), an enum, an integer type or uuid with a deterministic collation.';
		END IF;
	END LOOP;

	/* the values must be stored as given by the status column's type */
	v_type := alipayplus._column_type($1, $3);
	FOREACH val IN ARRAY ARRAY[$4, $5, $8, $9] LOOP
		IF val IS NOT NULL THEN
			/* stored as the owner stores it: a domain's CHECK is the owner's code */
			BEGIN
				SELECT x[1] IS NOT DISTINCT FROM val INTO v_fits
				FROM alipayplus._order_exec($1, 'SELECT $1::pg_catalog.text',
											ARRAY[val], ARRAY[$3]) x;
			EXCEPTION
				WHEN invalid_text_representation OR string_data_right_truncation
					 OR check_violation OR invalid_parameter_value THEN
					v_fits := false;
			END;
			IF NOT v_fits THEN
				RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
					MESSAGE = format('the value %L does not fit column %I of type %s', val, $3, v_type),
					DETAIL = 'Stored in that column it would read differently, so the guard could never recognise it.',
					HINT = 'Widen the column or use a value the type keeps as it is.';
			END IF;
		END IF;
	END LOOP;

	/*
	 * One order per request id: a unique index on that column alone.  A
	 * payment id column often holds a placeholder until Alipay+ answers,
	 * so it is not required to be unique; duplicates of a real payment id
	 * are refused when they are looked up.  Partitioned tables cannot
	 * have such an index unless partitioned by the id; their duplicates
	 * are refused when looked up, too.
	 */
	IF v_kind = 'r' THEN
		FOREACH col IN ARRAY ARRAY[$2] LOOP
			SELECT a.attnum INTO v_attnum FROM pg_catalog.pg_attribute a
			WHERE a.attrelid = $1 AND a.attname = col;
			IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
						   WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid
							 AND i.indpred IS NULL AND i.indexprs IS NULL
							 AND i.indnkeyatts = 1 AND i.indkey[0] = v_attnum) THEN
				RAISE EXCEPTION USING ERRCODE = 'invalid_table_definition',
					MESSAGE = format('column %I of table %s has no unique constraint', col, $1),
					DETAIL = 'Each payment id must identify one order row.',
					HINT = format('ALTER TABLE %s ADD UNIQUE (%I);', $1, col);
			END IF;
		END LOOP;
	END IF;

	/* the cancel window must not move with the caller's TimeZone */
	IF $7 IS NOT NULL THEN
		v_type := (SELECT a.atttypid::regtype::text FROM pg_catalog.pg_attribute a
				   WHERE a.attrelid = $1 AND a.attname = $7);
		IF v_type = 'timestamp with time zone' THEN
			IF $10 IS NOT NULL THEN
				RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
					MESSAGE = format('column %I is timestamptz: initiated_at_time_zone must be NULL', $7);
			END IF;
		ELSIF v_type = 'timestamp without time zone' THEN
			IF $10 IS NULL THEN
				RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
					MESSAGE = format('column %I is a timestamp without time zone: say which zone it is in', $7),
					DETAIL = 'Read in each caller''s TimeZone, the cancel window would move with the caller.',
					HINT = 'Pass initiated_at_time_zone => ''UTC'' (or the zone the application writes in), or make the column timestamptz.';
			END IF;
			PERFORM pg_catalog.timezone($10, pg_catalog.now());
		ELSE
			RAISE EXCEPTION USING ERRCODE = 'datatype_mismatch',
				MESSAGE = format('column %I is of type %s; the initiation time must be a timestamptz (or a timestamp with initiated_at_time_zone)', $7, v_type);
		END IF;
	ELSIF $10 IS NOT NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'initiated_at_time_zone needs initiated_at_column';
	END IF;

	INSERT INTO alipayplus.order_binding AS x
		(orders, request_id_column, status_column, cancelled_value,
		 cancelling_value, payment_id_column, initiated_at_column,
		 initiated_at_time_zone, paid_value, failed_value)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $8, $9)
	ON CONFLICT (singleton) DO UPDATE SET
		orders = excluded.orders, request_id_column = excluded.request_id_column,
		status_column = excluded.status_column, cancelled_value = excluded.cancelled_value,
		cancelling_value = excluded.cancelling_value,
		payment_id_column = excluded.payment_id_column,
		initiated_at_column = excluded.initiated_at_column,
		initiated_at_time_zone = excluded.initiated_at_time_zone,
		paid_value = excluded.paid_value, failed_value = excluded.failed_value,
		bound_at = pg_catalog.now();

	/* rows of the whole tree that are already cancelling or cancelled */
	FOR v_rel IN
		WITH RECURSIVE tree(relid) AS (
			SELECT $1::oid
			UNION
			SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid
		)
		SELECT tree.relid::regclass FROM tree
		JOIN pg_catalog.pg_class c ON c.oid = tree.relid WHERE c.relkind = 'r'
	LOOP
		PERFORM alipayplus._check_existing_rows(v_rel);
	END LOOP;

	PERFORM alipayplus._attach_guards(true);
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text) IS
	'Make an orders table follow the ledger and attach the guard triggers (superuser)';

/* The ledger guards itself the same way, and its keys never change */
CREATE TRIGGER cancellations_guard BEFORE UPDATE OR DELETE ON alipayplus.cancellations
	FOR EACH ROW EXECUTE FUNCTION @extschema@.alipayplus_guard_cancelled('state', 'CANCELLED', 'CANCELLING');
ALTER TABLE alipayplus.cancellations ENABLE ALWAYS TRIGGER cancellations_guard;
CREATE TRIGGER cancellations_guard_truncate BEFORE TRUNCATE ON alipayplus.cancellations
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.alipayplus_guard_truncate('state', 'CANCELLED', 'CANCELLING');
ALTER TABLE alipayplus.cancellations ENABLE ALWAYS TRIGGER cancellations_guard_truncate;

CREATE FUNCTION alipayplus._cancellations_key_fixed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.sent_field IS DISTINCT FROM OLD.sent_field OR NEW.sent_id IS DISTINCT FROM OLD.sent_id
	   OR NEW.cancellation_id IS DISTINCT FROM OLD.cancellation_id THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = format('cannot change the id sent by cancellation %s', OLD.cancellation_id),
			DETAIL = 'A cancellation belongs to one payment and always sends the same id.';
	END IF;
	RETURN NEW;
END;
$$;
CREATE TRIGGER cancellations_key_fixed BEFORE UPDATE ON alipayplus.cancellations
	FOR EACH ROW EXECUTE FUNCTION alipayplus._cancellations_key_fixed();
ALTER TABLE alipayplus.cancellations ENABLE ALWAYS TRIGGER cancellations_key_fixed;

/* ------------------------------------------------------------------
 * What needs a person
 * ------------------------------------------------------------------ */

CREATE VIEW alipayplus.attention AS
SELECT c.cancellation_id, c.sent_field, c.sent_id, c.payment_request_id,
	c.payment_id, c.state, c.attempt_count, c.last_result_status,
	c.last_result_code, c.last_result_message, c.last_attempt_at,
	c.requested_at, c.deadline,
	CASE
		WHEN c.needs_attention THEN c.attention_reason
		WHEN c.unanswered_streak >= 3 THEN
			format('the gateway did not answer the last %s attempts (last: %s); the cancellation keeps retrying: check alipayplus.gateway_url and the network',
				   c.unanswered_streak, c.last_result_code)
		WHEN c.next_attempt_at < pg_catalog.now() - interval '10 minutes' THEN
			format('overdue since %s: the processor is not running or its runs fail (see alipayplus.processor_runs and cron.job_run_details)',
				   c.next_attempt_at)
		ELSE format('still CANCELLING after the cancel deadline %s; Alipay+ may answer CANCEL_WINDOW_EXCEED, consider a refund', c.deadline)
	END AS reason
FROM alipayplus.cancellations c
WHERE c.needs_attention
	OR (c.state = 'CANCELLING'
		AND (c.deadline <= pg_catalog.now() OR c.unanswered_streak >= 3
			 OR c.next_attempt_at < pg_catalog.now() - interval '10 minutes'));
COMMENT ON VIEW alipayplus.attention IS 'Each cancellation a person must look at, and why';

/* ------------------------------------------------------------------
 * Privileges: nothing that holds data or signs is PUBLIC
 * ------------------------------------------------------------------ */

REVOKE ALL ON ALL TABLES IN SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_signature(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_cancel_payment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_cancel(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_requeue_cancellation(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_note_refund(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_apply_payment_result(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text) FROM PUBLIC;
