/*
 * extension/src/10_tables.sql
 *	  The schema "alipayplus" and its tables: the ledger (cancellations,
 *	  cancel_attempts), the inquiries made, the result policy with its built-in rows, the order
 *	  binding, known refunds and processor runs, and what pg_dump keeps.
 *
 *	  Part of the SQL source of the current version of alipayplus_cancel: the
 *	  files of extension/src/ are read in the order of their names and joined
 *	  by the Makefile into alipayplus_cancel--<default_version>.sql (see
 *	  README, Development).  Functions live in the extension's schema
 *	  (@extschema@, default public); tables and internal functions in the
 *	  schema "alipayplus".  Every object is schema-qualified and every
 *	  SECURITY DEFINER function pins search_path = pg_catalog, pg_temp, so a
 *	  hostile search_path cannot redirect anything.  Nothing that holds data
 *	  or signs is granted to PUBLIC (90_grants.sql).
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

CREATE SCHEMA alipayplus;
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
	/*
	 * Who closed a row's attention item, when, why, and what it said.  The
	 * item leaves alipayplus.attention; something new (a new flag, a new
	 * attempt, a later paid notification) opens it again.
	 */
	attention_closed_at timestamptz,
	attention_closed_by name,
	attention_closed_session_user name,
	attention_closed_note text,
	attention_closed_reason text,
	/*
	 * Set on a CANCELLED row whose bound order has yet to follow: the apply
	 * of its verified S was cut by the caller's interrupt; the next
	 * processor run updates the order (alipayplus._follow_orders).
	 */
	order_follow_at timestamptz,
	UNIQUE (sent_field, sent_id),
	CHECK (sent_id = CASE sent_field WHEN 'paymentRequestId' THEN payment_request_id
									 ELSE payment_id END),
	CHECK ((state = 'CANCELLED') = (cancelled_at IS NOT NULL)),
	CHECK (needs_attention = (attention_reason IS NOT NULL)),
	CHECK (state = 'CANCELLING' OR next_attempt_at IS NULL),
	CONSTRAINT cancellations_attention_closed_check CHECK (
		(attention_closed_at IS NULL) = (attention_closed_by IS NULL)
		AND (attention_closed_at IS NULL) = (attention_closed_session_user IS NULL)
		AND (attention_closed_at IS NULL) = (attention_closed_note IS NULL)
		AND (attention_closed_at IS NULL) = (attention_closed_reason IS NULL)),
	CONSTRAINT cancellations_order_follow_check CHECK (
		order_follow_at IS NULL OR (state = 'CANCELLED' AND NOT needs_attention))
);
/*
 * The processor's claim reads it in its own order (next_attempt_at, then
 * id) and stops after the rows it takes: a burst queued in one transaction
 * shares one next_attempt_at, and an index of that alone had the claim
 * sort the whole queue each time.
 */
CREATE INDEX cancellations_due ON alipayplus.cancellations (next_attempt_at, cancellation_id)
	WHERE state = 'CANCELLING' AND NOT needs_attention;
CREATE INDEX cancellations_order_follow ON alipayplus.cancellations (order_follow_at)
	WHERE order_follow_at IS NOT NULL;
CREATE INDEX cancellations_request_id ON alipayplus.cancellations (payment_request_id);
CREATE INDEX cancellations_payment_id ON alipayplus.cancellations (payment_id);
COMMENT ON TABLE alipayplus.cancellations IS
	'One row per payment whose cancellation was requested, keyed by the one id it sends; CANCELLING moves only to CANCELLED, which is final';

CREATE TABLE alipayplus.cancel_attempts (
	attempt_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	cancellation_id bigint,
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
	caller text NOT NULL,
	/*
	 * An attempt is put on record, committed, before its request leaves
	 * (result_code 'local.no_answer_yet', completed_at NULL) and completed
	 * once with the answer or the reason there is none (issue 16)
	 */
	completed_at timestamptz DEFAULT pg_catalog.clock_timestamp(),
	run_id bigint
);
CREATE INDEX cancel_attempts_cancellation ON alipayplus.cancel_attempts (cancellation_id);
CREATE INDEX cancel_attempts_attempted_at ON alipayplus.cancel_attempts (attempted_at);
/* the calls in flight, looked up by the row they are for (the claim) */
CREATE INDEX cancel_attempts_no_answer_yet ON alipayplus.cancel_attempts (cancellation_id)
	WHERE result_code = 'local.no_answer_yet';
COMMENT ON TABLE alipayplus.cancel_attempts IS
	'One row per cancelPayment HTTP attempt; never key material or signatures';
COMMENT ON COLUMN alipayplus.cancel_attempts.cancellation_id IS
	'The ledger row (alipayplus.cancellations) the attempt was made for; kept by the ledger''s own code, not a foreign key, so that pg_restore -j can load the tables in any order';

/*
 * One row per inquiryPayment call (alipayplus_inquire_payment): what was
 * asked, what came back and whether its signature verified.  An inquiry
 * changes nothing at Alipay+, so these rows are a log the DBA may prune;
 * only the extension's SECURITY DEFINER code writes them.
 */
CREATE TABLE alipayplus.inquiries (
	inquiry_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	sent_field text NOT NULL CHECK (sent_field IN ('paymentRequestId', 'paymentId')),
	sent_id text NOT NULL,
	request_time text NOT NULL,
	inquired_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	inquired_by name NOT NULL DEFAULT session_user,
	/* the inquiry call itself; U with a local.* code when no trusted answer came */
	result_status text NOT NULL CHECK (result_status IN ('S', 'F', 'U')),
	result_code text NOT NULL,
	result_message text,
	/* the payment's result, given only with a result S */
	payment_status text CHECK (payment_status IN ('S', 'F', 'U')),
	payment_code text,
	payment_message text,
	payment_id text,
	payment_request_id text,
	payment_time timestamptz,
	amount_currency text,
	amount_value bigint,
	acquirer_id text,
	psp_id text,
	http_status integer,
	signature_verified boolean,
	latency_ms double precision,
	error_detail text,
	/* the resolution (alipayplus.resolutions) it was made for, if any */
	resolution_id bigint,
	/*
	 * A resolver's inquiry is on record before its request leaves: U
	 * local.no_answer_yet, completed_at NULL, run_id the processor run
	 * (alipayplus.processor_runs) that sends it; completed once with the
	 * answer or the reason there is none.  A direct inquiry
	 * (alipayplus_inquire_payment) is recorded complete.
	 */
	completed_at timestamptz DEFAULT pg_catalog.clock_timestamp(),
	run_id bigint,
	CHECK (result_status = 'S' OR payment_status IS NULL),
	CHECK ((payment_status IS NULL) = (payment_code IS NULL)),
	CHECK (completed_at IS NOT NULL OR result_code = 'local.no_answer_yet')
);
CREATE INDEX inquiries_sent_id ON alipayplus.inquiries (sent_id, inquired_at);
CREATE INDEX inquiries_inquired_at ON alipayplus.inquiries (inquired_at);
CREATE INDEX inquiries_open ON alipayplus.inquiries (resolution_id)
	WHERE completed_at IS NULL;
COMMENT ON TABLE alipayplus.inquiries IS
	'One row per inquiryPayment call; never key material or signatures';
COMMENT ON COLUMN alipayplus.inquiries.amount_value IS
	'paymentAmount.value as Alipay+ sends it: in the currency''s minor unit (SGD 1250 = 12.50)';

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
	('local.bad_signature', 'retry', 'the response signature was missing in part or did not verify: check our settings alipayplus.public_key_file (it must hold Alipay+''s public key), alipayplus.response_key_version, alipayplus.private_key_file and alipayplus.client_id'),
	('local.client_id_mismatch', 'retry', 'the response named another Client-Id: check our setting alipayplus.client_id'),
	('local.unsigned_success', 'retry', 'an unsigned response claimed success'),
	('local.no_answer_yet', 'retry', 'the request is on its way; its answer is not recorded yet'),
	('local.interrupted', 'retry', 'no answer: a query cancel or shutdown ended the call after the request left; the outcome is unknown'),
	('local.statement_timeout', 'retry', 'no answer before the caller''s statement_timeout ended the call; the outcome is unknown'),
	('local.time_budget', 'retry', 'no answer before the run''s time_budget ended the call; the outcome is unknown'),
	('local.crashed', 'retry', 'no answer: the backend making the call ended (pg_terminate_backend, a crash) or its claim expired before the answer was recorded; the outcome is unknown');
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
	bound_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	/* the statuses of orders still waiting for their payment result */
	pending_values text[]
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
	finished_at timestamptz,
	claimed integer NOT NULL,
	cancelled integer NOT NULL,
	retrying integer NOT NULL,
	attention integer NOT NULL,
	unanswered integer NOT NULL,
	busy integer NOT NULL,
	stopped_because text NOT NULL,
	/* the backend running it: a run whose backend is gone ended unfinished */
	pid integer,
	backend_start timestamptz,
	caller text
);
COMMENT ON TABLE alipayplus.processor_runs IS
	'One row per processor run, written when it starts (stopped_because ''running'') and finished when it stops; ''ended unfinished: ...'' is a run whose backend ended';

/* user data survives pg_dump */
SELECT pg_catalog.pg_extension_config_dump('alipayplus.cancellations', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.cancel_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.order_binding', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.result_policy', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.known_refunds', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.processor_runs', '');
SELECT pg_catalog.pg_extension_config_dump('alipayplus.inquiries', '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.cancellations', 'cancellation_id'), '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.cancel_attempts', 'attempt_id'), '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.processor_runs', 'run_id'), '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.inquiries', 'inquiry_id'), '');
