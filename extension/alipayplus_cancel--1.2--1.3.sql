/*
 * alipayplus_cancel--1.2--1.3.sql
 *	  Upgrade of the alipayplus_cancel extension from 1.2 to 1.3 (also the
 *	  fourth step of every fresh install of 1.3).
 *
 * 1.3 changes, each in its own section below:
 *  - issue 17: alipayplus_note_refund and every path that gives an id a
 *    cancellation serialise on the id (a transaction-level advisory lock)
 *    and look at the latest committed data once they hold it, so a
 *    refund and a cancellation of one id can no longer both commit when
 *    no order row orders them (no bound table, or an id the table does
 *    not hold).
 *  - issue 18.1: the binding names the pending status values
 *    (alipayplus_bind_orders(..., pending_values)), and
 *    alipayplus_stale_orders picks only orders in one of them; it refuses
 *    to run on a binding without them.  alipayplus_bind_orders gains the
 *    argument at the end (the old signature is replaced: it was, and is,
 *    for superusers only, so no grant of it could matter).
 *  - issue 18.2: attention items can be closed
 *    (alipayplus_close_attention(cancellation_id, note)), keeping who,
 *    when and why in new columns of alipayplus.cancellations; a late paid
 *    notification shows in alipayplus.attention; an exhausted
 *    local.bad_signature points to our own key settings.
 */

\echo Use "ALTER EXTENSION alipayplus_cancel UPDATE TO '1.3'" to load this file. \quit

/* ---- issue 17: a refund and a cancel request for one id serialise on it ---- */

/*
 * For alipayplus_note_refund: lock the ids (the same advisory locks the
 * cancel paths take, src/ledger.c) and say whether either already has a
 * cancellation, on the latest committed data.
 */
CREATE FUNCTION alipayplus._refund_blocked(refund_request_id text, refund_id text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'alipayplus_refund_blocked'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._refund_blocked(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.alipayplus_note_refund(refund_request_id text,
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
	IF alipayplus._refund_blocked($1, $2) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA003',
			MESSAGE = format('%s already has a cancellation as a payment', coalesce($1, $2)),
			HINT = 'A payment whose cancellation was requested cannot be noted as a refund; see alipayplus.cancellations.';
	END IF;
	INSERT INTO alipayplus.known_refunds (refund_request_id, refund_id)
	VALUES ($1, $2) ON CONFLICT DO NOTHING;
END;
$$;

/* ---- issue 18.1: stale orders are chosen by the bound pending values ---- */

ALTER TABLE alipayplus.order_binding ADD COLUMN pending_values text[];

DROP FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text);

CREATE FUNCTION @extschema@.alipayplus_bind_orders(orders regclass,
	request_id_column name, status_column name, cancelled_value text,
	cancelling_value text, payment_id_column name DEFAULT NULL,
	initiated_at_column name DEFAULT NULL, paid_value text DEFAULT NULL,
	failed_value text DEFAULT NULL, initiated_at_time_zone text DEFAULT NULL,
	pending_values text[] DEFAULT NULL)
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

	/*
	 * The pending values: the statuses of orders still waiting for their
	 * payment result, the only ones alipayplus_stale_orders picks.  A
	 * list, none of it NULL, none of it a value with another meaning.
	 */
	IF $11 IS NOT NULL THEN
		IF pg_catalog.cardinality($11) = 0 OR pg_catalog.array_position($11, NULL) IS NOT NULL THEN
			RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
				MESSAGE = 'pending_values must list at least one status, and no NULL',
				HINT = 'Name the statuses of orders still waiting for their payment result, e.g. pending_values => ARRAY[''PENDING''].';
		END IF;
		FOREACH val IN ARRAY $11 LOOP
			IF val IN ($4, $5, $8, $9) THEN
				RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
					MESSAGE = format('the pending value %L is also the cancelled, cancelling, paid or failed value', val),
					DETAIL = 'An order in a pending status is one still waiting for its payment result.';
			END IF;
		END LOOP;
	END IF;

	/* the values must be stored as given by the status column's type */
	v_type := alipayplus._column_type($1, $3);
	FOREACH val IN ARRAY ARRAY[$4, $5, $8, $9] OPERATOR(pg_catalog.||) coalesce($11, '{}') LOOP
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
		 initiated_at_time_zone, paid_value, failed_value, pending_values)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $8, $9, $11)
	ON CONFLICT (singleton) DO UPDATE SET
		orders = excluded.orders, request_id_column = excluded.request_id_column,
		status_column = excluded.status_column, cancelled_value = excluded.cancelled_value,
		cancelling_value = excluded.cancelling_value,
		payment_id_column = excluded.payment_id_column,
		initiated_at_column = excluded.initiated_at_column,
		initiated_at_time_zone = excluded.initiated_at_time_zone,
		paid_value = excluded.paid_value, failed_value = excluded.failed_value,
		pending_values = excluded.pending_values,
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
COMMENT ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text, text[]) IS
	'Make an orders table follow the ledger and attach the guard triggers (superuser); pending_values are the statuses alipayplus_stale_orders picks';
REVOKE ALL ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text, text[]) FROM PUBLIC;

/*
 * The request ids of the bound orders whose status is one of the binding's
 * pending values (still waiting for a payment result) and which were
 * initiated longer than older_than ago (oldest first), read as the table's
 * owner.  Needs an initiation time column and the pending values in the
 * binding; an order in any other status (shipped, refunded, expired, NULL)
 * is never picked.
 */
CREATE OR REPLACE FUNCTION @extschema@.alipayplus_stale_orders(older_than interval)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	r text[];
	v_initiated text;
BEGIN
	IF $1 IS NULL OR $1 < interval '0' THEN
		RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'older_than must be an interval of zero or more';
	END IF;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR b.initiated_at_column IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'alipayplus_stale_orders needs a bound orders table with an initiation time column',
			HINT = 'Bind it with alipayplus_bind_orders(..., initiated_at_column => ..., pending_values => ...).';
	END IF;
	IF b.pending_values IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'alipayplus_stale_orders needs the pending status values in the binding',
			DETAIL = 'Only orders in a status that means "waiting for the payment result" may be cancelled as stale; without the list, shipped, refunded or expired orders would be taken for waiting ones.',
			HINT = 'Bind the table again with alipayplus_bind_orders(..., pending_values => ARRAY[''PENDING'']), naming your statuses of orders still waiting for their payment result.';
	END IF;
	v_initiated := CASE WHEN b.initiated_at_time_zone IS NULL THEN format('%I', b.initiated_at_column)
		ELSE format('pg_catalog.timezone(%L, %I)', b.initiated_at_time_zone, b.initiated_at_column) END;
	FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
		format('SELECT %I::pg_catalog.text FROM %s WHERE %s OPERATOR(pg_catalog.<) $1::pg_catalog.timestamptz '
			   'AND %I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.text[]) ORDER BY %s',
			   b.request_id_column, b.orders, v_initiated, b.status_column, v_initiated),
		ARRAY[(pg_catalog.now() - $1)::text, b.pending_values::text])
	LOOP
		RETURN NEXT r[1];
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_stale_orders(interval) IS
	'Request ids of bound orders in a pending status (the binding''s pending_values) initiated longer than older_than ago';

/* ---- issue 18.2: closable attention items, late paid notifications, key advice ---- */

/* The role the caller acts as (SET ROLE), which SECURITY DEFINER hides */
CREATE FUNCTION alipayplus._outer_user()
RETURNS name
AS 'MODULE_PATHNAME', 'alipayplus_outer_user'
LANGUAGE C STABLE;
REVOKE ALL ON FUNCTION alipayplus._outer_user() FROM PUBLIC;

/*
 * Who closed a row's attention item, when, why, and what it said.  The
 * item leaves alipayplus.attention; something new (a new flag, a new
 * attempt, a later paid notification) opens it again.
 */
ALTER TABLE alipayplus.cancellations
	ADD COLUMN attention_closed_at timestamptz,
	ADD COLUMN attention_closed_by name,
	ADD COLUMN attention_closed_session_user name,
	ADD COLUMN attention_closed_note text,
	ADD COLUMN attention_closed_reason text,
	ADD CONSTRAINT cancellations_attention_closed_check CHECK (
		(attention_closed_at IS NULL) = (attention_closed_by IS NULL)
		AND (attention_closed_at IS NULL) = (attention_closed_session_user IS NULL)
		AND (attention_closed_at IS NULL) = (attention_closed_note IS NULL)
		AND (attention_closed_at IS NULL) = (attention_closed_reason IS NULL));

CREATE OR REPLACE VIEW alipayplus.attention AS
SELECT c.cancellation_id, c.sent_field, c.sent_id, c.payment_request_id,
	c.payment_id, c.state, c.attempt_count, c.last_result_status,
	c.last_result_code, c.last_result_message, c.last_attempt_at,
	c.requested_at, c.deadline,
	CASE
		WHEN c.needs_attention THEN c.attention_reason || coalesce('; and ' || l.late_paid, '')
		WHEN l.late_paid IS NOT NULL THEN l.late_paid
		WHEN c.unanswered_streak >= 3 THEN
			format('the gateway did not answer the last %s attempts (last: %s); the cancellation keeps retrying: check alipayplus.gateway_url and the network',
				   c.unanswered_streak, c.last_result_code)
		WHEN c.next_attempt_at < pg_catalog.now() - interval '10 minutes' THEN
			format('overdue since %s: the processor is not running or its runs fail (see alipayplus.processor_runs and cron.job_run_details)',
				   c.next_attempt_at)
		ELSE format('still CANCELLING after the cancel deadline %s; Alipay+ may answer CANCEL_WINDOW_EXCEED, consider a refund', c.deadline)
	END AS reason
FROM alipayplus.cancellations c
CROSS JOIN LATERAL (
	/* a paid notification after the request, not yet seen by a person */
	SELECT CASE WHEN c.late_payment_status = 'S'
			AND (c.attention_closed_at IS NULL OR c.late_payment_at > c.attention_closed_at) THEN
		format('a paid notification (S%s) arrived at %s after the cancellation was requested, and the cancellation is %s: ask Alipay+ (inquiryPayment) whether the payment stands, and refund it if it does; then alipayplus_close_attention(%s, note)',
			   coalesce(' ' || c.late_payment_code, ''), c.late_payment_at, c.state, c.cancellation_id)
		END AS late_paid
) l
WHERE c.needs_attention
	OR l.late_paid IS NOT NULL
	OR (c.state = 'CANCELLING'
		AND (c.attention_closed_at IS NULL OR c.last_attempt_at > c.attention_closed_at)
		AND (c.deadline <= pg_catalog.now() OR c.unanswered_streak >= 3
			 OR c.next_attempt_at < pg_catalog.now() - interval '10 minutes'));
COMMENT ON VIEW alipayplus.attention IS
	'Each cancellation a person must look at, and why, until it is handled (alipayplus_close_attention)';

CREATE FUNCTION @extschema@.alipayplus_close_attention(cancellation_id bigint, note text)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c alipayplus.cancellations;
	v_reason text;
BEGIN
	IF $1 IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'give the cancellation_id of an item of alipayplus.attention';
	END IF;
	IF $2 IS NULL OR pg_catalog.btrim($2) = '' THEN
		RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
			MESSAGE = 'say why the item is closed: note must not be empty',
			HINT = 'For example: ''refunded as R-123, ticket 456'' or ''Alipay+ support confirmed the cancellation''.';
	END IF;
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1 FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'no_data_found',
			MESSAGE = format('no cancellation with id %s', $1);
	END IF;
	SELECT a.reason INTO v_reason FROM alipayplus.attention a
	WHERE a.cancellation_id = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s has no open attention item', $1),
			DETAIL = CASE WHEN c.attention_closed_at IS NOT NULL THEN
				format('Its last item was closed at %s by %s: %s', c.attention_closed_at,
					   c.attention_closed_by, c.attention_closed_note)
				ELSE 'Nothing about it needs a person.' END,
			HINT = 'alipayplus.attention lists the open items.';
	END IF;
	UPDATE alipayplus.cancellations x SET
		needs_attention = false, attention_reason = NULL,
		attention_closed_at = pg_catalog.clock_timestamp(),
		attention_closed_by = alipayplus._outer_user(),
		attention_closed_session_user = session_user,
		attention_closed_note = $2,
		attention_closed_reason = v_reason
	WHERE x.cancellation_id = $1
	RETURNING * INTO c;
	RETURN c;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_close_attention(bigint, text) IS
	'Close an open item of alipayplus.attention, keeping who, when and why; a flagged row stays out of the queue';
REVOKE ALL ON FUNCTION @extschema@.alipayplus_close_attention(bigint, text) FROM PUBLIC;

/*
 * A closed item of a flagged CANCELLING row leaves the row CANCELLING, not
 * flagged and with no due time: it waits for nothing, so the queue figures
 * count only rows with a due time.
 */
/* Queue depth, for the stats view and the backlog's progress: rows with a due time */
CREATE OR REPLACE FUNCTION @extschema@.alipayplus_queue_depth(OUT queued bigint, OUT due bigint,
	OUT oldest_due timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT count(*), count(*) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()),
		min(x.next_attempt_at) FILTER (WHERE x.next_attempt_at <= pg_catalog.now())
	FROM alipayplus.cancellations x
	WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
		AND x.next_attempt_at IS NOT NULL
$$;
CREATE OR REPLACE VIEW alipayplus.stats AS
WITH recent AS (
	SELECT a.result_status, a.result_code, a.latency_ms
	FROM alipayplus.cancel_attempts a
	WHERE a.attempted_at > pg_catalog.now() - interval '1 hour'
)
SELECT
	/* backends waiting on Alipay+ right now (each may have many calls in flight) */
	(SELECT count(*) FROM pg_catalog.pg_stat_activity s
	 WHERE s.wait_event_type = 'Extension' AND s.wait_event = 'Extension'
	   AND s.query ~* 'alipayplus_(process_cancellations|run_cancellations|process_backlog|cancel_payment)') AS backends_calling,
	q.queued, q.due, q.oldest_due,
	(SELECT count(*) FROM alipayplus.cancellations x WHERE x.needs_attention) AS needing_attention,
	(SELECT count(*) FROM recent) AS attempts_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'S') AS s_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'F') AS f_last_hour,
	(SELECT count(*) FROM recent WHERE result_status = 'U' AND result_code NOT LIKE 'local.%') AS u_last_hour,
	(SELECT count(*) FROM recent WHERE result_code LIKE 'local.%') AS local_last_hour,
	(SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p50_ms,
	(SELECT round(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p95_ms,
	(SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) FROM recent) AS latency_p99_ms
FROM (SELECT count(*) AS queued,
			 count(*) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()) AS due,
			 min(x.next_attempt_at) FILTER (WHERE x.next_attempt_at <= pg_catalog.now()) AS oldest_due
	  FROM alipayplus.cancellations x
	  WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
		AND x.next_attempt_at IS NOT NULL) q;
COMMENT ON VIEW alipayplus.stats IS
	'Queue depth, the oldest due row, and the last hour''s attempts by outcome with latency percentiles';
/*
 * An exhausted local.* code is ours to fix: its built-in note (quoted in
 * the attention reason, src/ledger.c) names the settings to check.  The
 * built-in rows are read-only to everybody else (the trigger turns an
 * update into a DBA row); the update changes them in place.
 */
ALTER TABLE alipayplus.result_policy DISABLE TRIGGER result_policy_builtin;
UPDATE alipayplus.result_policy SET note = CASE result_code
	WHEN 'local.bad_signature' THEN
		'the response signature was missing in part or did not verify: check our settings alipayplus.public_key_file (it must hold Alipay+''s public key), alipayplus.response_key_version, alipayplus.private_key_file and alipayplus.client_id'
	WHEN 'local.client_id_mismatch' THEN
		'the response named another Client-Id: check our setting alipayplus.client_id'
	END
WHERE builtin AND result_code IN ('local.bad_signature', 'local.client_id_mismatch');
ALTER TABLE alipayplus.result_policy ENABLE TRIGGER result_policy_builtin;
