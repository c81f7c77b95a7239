/*
 * extension/src/20_calls.sql
 *	  The functions written in C (src/): ids, the user's orders table run as
 *	  its owner, configuration, the signed cancelPayment call (one, or many in
 *	  flight at once) and inquiryPayment call, signatures, the row triggers of the guard; and the
 *	  cancel window.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

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

/*
 * Raises 25006 in a read-only transaction or on a server in recovery;
 * called first by every function that sends or queues a cancellation
 * (the C ones call it directly).
 */
CREATE FUNCTION alipayplus._refuse_read_only()
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_refuse_read_only'
LANGUAGE C VOLATILE;

/* The same refusal for another action: "cannot <what> in a read-only transaction" */
CREATE FUNCTION alipayplus._refuse_read_only_to(what text)
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_refuse_read_only_to'
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

/* Many cancelPayment calls in flight at once: one row per call, ord its index in ids */
CREATE FUNCTION alipayplus._call_cancel_many(fields text[], ids text[],
	max_ms integer DEFAULT NULL,
	OUT ord integer, OUT sent_field text, OUT sent_id text, OUT request_time text,
	OUT http_status integer, OUT result_status text, OUT result_code text,
	OUT result_message text, OUT acquirer_id text, OUT psp_id text,
	OUT signature_verified boolean, OUT latency_ms double precision,
	OUT error_detail text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'alipayplus_call_cancel_many'
LANGUAGE C VOLATILE;

/*
 * One inquiryPayment call: the columns of _call_cancel, then the payment's
 * result and fields (src/cancel.c, the same call path as cancelPayment)
 */
CREATE FUNCTION alipayplus._call_inquiry(payment_id text, payment_request_id text,
	OUT sent_field text, OUT sent_id text, OUT request_time text,
	OUT http_status integer, OUT result_status text, OUT result_code text,
	OUT result_message text, OUT acquirer_id text, OUT psp_id text,
	OUT signature_verified boolean, OUT latency_ms double precision,
	OUT error_detail text,
	OUT payment_status text, OUT payment_code text, OUT payment_message text,
	OUT payment_id text, OUT payment_request_id text,
	OUT payment_time timestamptz, OUT amount_currency text,
	OUT amount_value bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'alipayplus_call_inquiry'
LANGUAGE C VOLATILE;

/*
 * One inquiry, recorded: the call, then its row in alipayplus.inquiries
 * (the call refuses first, with its own words, where the row could not be
 * written: a read-only transaction, a standby); p_resolution_id links it
 * to the resolution it was made for
 */
CREATE FUNCTION alipayplus._inquire(p_payment_id text, p_payment_request_id text,
	p_resolution_id bigint DEFAULT NULL)
RETURNS alipayplus.inquiries
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a record;
	r alipayplus.inquiries;
BEGIN
	SELECT * INTO STRICT a FROM alipayplus._call_inquiry(p_payment_id, p_payment_request_id);
	INSERT INTO alipayplus.inquiries (sent_field, sent_id, request_time,
		result_status, result_code, result_message, payment_status,
		payment_code, payment_message, payment_id, payment_request_id,
		payment_time, amount_currency, amount_value, acquirer_id, psp_id,
		http_status, signature_verified, latency_ms, error_detail, resolution_id)
	VALUES (a.sent_field, a.sent_id, a.request_time, a.result_status,
		a.result_code, a.result_message, a.payment_status, a.payment_code,
		a.payment_message, a.payment_id, a.payment_request_id,
		a.payment_time, a.amount_currency, a.amount_value, a.acquirer_id,
		a.psp_id, a.http_status, a.signature_verified, a.latency_ms,
		a.error_detail, p_resolution_id)
	RETURNING * INTO r;
	RETURN r;
END;
$$;

/*
 * Ask Alipay+ about a payment and record the inquiry
 * (alipayplus.inquiries), in the caller's transaction.  Changes nothing
 * else: no ledger row, no order.
 */
CREATE FUNCTION @extschema@.alipayplus_inquire_payment(payment_id text DEFAULT NULL,
	payment_request_id text DEFAULT NULL)
RETURNS TABLE (result_status text, result_code text, result_message text,
	payment_status text, payment_code text, payment_message text,
	payment_id text, payment_request_id text, payment_time timestamptz,
	amount_currency text, amount_value bigint, acquirer_id text, psp_id text,
	signature_verified boolean, inquiry_id bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
ROWS 1
BEGIN ATOMIC
	SELECT i.result_status, i.result_code, i.result_message, i.payment_status,
		i.payment_code, i.payment_message, i.payment_id, i.payment_request_id,
		i.payment_time, i.amount_currency, i.amount_value, i.acquirer_id,
		i.psp_id, i.signature_verified, i.inquiry_id
	FROM alipayplus._inquire($1, $2) i;
END;
COMMENT ON FUNCTION @extschema@.alipayplus_inquire_payment(text, text) IS
	'Call inquiryPayment now for one id and record it in alipayplus.inquiries: the inquiry''s result, and the payment''s result when Alipay+ gave one';

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
