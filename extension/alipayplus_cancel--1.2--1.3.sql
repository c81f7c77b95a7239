/*
 * alipayplus_cancel--1.2--1.3.sql
 *	  Upgrade of the alipayplus_cancel extension from 1.2 to 1.3.  A fresh
 *	  install of 1.3 runs the script make generates from extension/src/,
 *	  where each statement below is folded into its object's definition.
 *
 * 1.3 changes, each in its own section below:
 *  - issue 19: the procedures that commit refuse to run where they cannot
 *    commit, before sending anything; time_budget has an upper bound; an
 *    order update must change exactly one row; a binding with cancellations
 *    in progress cannot be replaced by one that would strand their orders;
 *    a cancellation found by either id it knows, its verified S reaching
 *    the order by request id; NOTIFY on commit only, so that PREPARE
 *    TRANSACTION works (src/ledger.c, src/orders.c, src/guard.c).  After
 *    review: a payment id alone (often a placeholder) never ties a request
 *    to another request id's row, and a row keyed by payment id learns its
 *    request id only from the one order holding it; the committing
 *    procedures COMMIT before claiming anything; requests and
 *    alipayplus_bind_orders serialise on a binding lock; alipayplus.attention
 *    lists stranded orders (alipayplus._stranded_orders).
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
 *  - issue 18.3: a parallel restore (pg_restore -j) restores the whole
 *    ledger: the foreign key from alipayplus.cancel_attempts to
 *    alipayplus.cancellations goes.  Both are extension configuration
 *    tables, whose constraints exist before their data is loaded, and
 *    pg_dump's archive records no order between the two tables' data, so
 *    pg_restore -j loaded the attempts beside (or before) their ledger rows
 *    and the key refused every one.  Only the ledger's own SECURITY DEFINER
 *    code writes attempts, always for a ledger row it holds locked, and a
 *    ledger row can never be deleted (the guard), so no attempt can lose
 *    its row.  In place of the key, ENABLE ALWAYS triggers refuse DELETE,
 *    TRUNCATE and any UPDATE of what an attempt recorded, and
 *    alipayplus.check_ledger() lists attempts without their ledger row.
 *  - issue 18.6 (no SQL here): the refusal (55000) of sessions that have
 *    temporary tables or types names the pooler's reset settings in its
 *    hint (src/orders.c).
 *  - issue 15 (foundations): alipayplus_inquire_payment(), the signed
 *    inquiryPayment call on the cancel call's path, every inquiry recorded
 *    in the new table alipayplus.inquiries; setting alipayplus.inquiry_path.
 *    The resolver's first step: alipayplus_request_resolve() queues a
 *    payment of unknown result in alipayplus.resolutions,
 *    alipayplus_process_resolutions() inquires and decides (paid, failed,
 *    cancel what stays unknown).
 *  - issue 18.8: every function that sends or queues a cancellation
 *    refuses first, with 25006, in a read-only transaction or on a server
 *    in recovery (src/cancel.c, aps_refuse_read_only);
 *    alipayplus_request_cancel_all refuses as a whole instead of reporting
 *    each id as an error.
 *  - review of 17/18: alipayplus_request_cancel_all gains only_pending
 *    (the sweep re-checks each order's status under its row lock and
 *    reports not_pending, ZA005; src/ledger.c), a request of a paid order
 *    keeps the paid notification, a verified S whose order did not follow
 *    cannot be closed, late notifications are stamped with clock time and
 *    an open S is not replaced by U or F, reasons arising after a close
 *    open it again, and the id locks use a lock tag SQL cannot take.
 *  - the views alipayplus.attention and alipayplus.stats are created with
 *    pg_catalog alone on the search_path, so that no look-alike function
 *    or operator in the extension's schema is bound into them.
 *  - issue 14: the background worker (src/worker.c) is woken when a
 *    transaction that made a row due commits: the trigger
 *    cancellations_wake_worker on alipayplus.cancellations
 *    (alipayplus._wake_worker) notes such rows.
 * Functions that change are replaced (alipayplus_bind_orders,
 * alipayplus_request_cancel_all and alipayplus._mark_cancelling, which gain
 * an argument, are dropped and created again); alipayplus.order_binding
 * gains pending_values and alipayplus.cancellations the
 * attention_closed_* columns (no table is rewritten).
 */

\echo Use "ALTER EXTENSION alipayplus_cancel UPDATE TO '1.3'" to load this file. \quit

/* ---- issue 19, item 1: the procedures that commit run only where they can commit ---- */

/*
 * Raises 25001 unless its caller can commit: see src/ledger.c.  Public:
 * it reads nothing and signs nothing, and the roles that run the
 * processor (often without USAGE on schema alipayplus) must be able to
 * call it.
 */
CREATE PROCEDURE @extschema@.alipayplus_require_top_level(procedure_name text)
AS 'MODULE_PATHNAME', 'alipayplus_require_top_level'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_require_top_level(text) IS
	'Internal: raises 25001 unless the calling procedure can commit (a CALL of its own, outside a transaction block)';

/*
 * The procedures themselves call it from C now: see the issue 16 section
 * below, where alipayplus_process_backlog and alipayplus_run_cancellations
 * are replaced.
 */

/* ---- issue 19, item 6: time_budget fits the calls' millisecond limits ---- */

/*
 * alipayplus_process_cancellations takes its time budget in milliseconds
 * now in C: it is replaced in the issue 16 section below.
 */

/* ---- issue 19, item 4: an order update changes exactly one row ---- */

CREATE OR REPLACE FUNCTION alipayplus._set_order_status(p_field text, p_id text, p_status text,
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

/* ---- issue 19, item 3: a cancellation reaches its order by request id when it knows it ---- */

CREATE OR REPLACE FUNCTION @extschema@.alipayplus_requeue_cancellation(cancellation_id bigint)
RETURNS alipayplus.cancellations
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c alipayplus.cancellations;
BEGIN
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION USING ERRCODE = 'no_data_found',
			MESSAGE = format('no cancellation with id %s', $1);
	END IF;
	/*
	 * The order row first, then the ledger row, like every other path; by
	 * its request id when the row knows it (a payment id the order may not
	 * have stored yet would not find it)
	 */
	PERFORM alipayplus._lock_order(
		CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
		coalesce(c.payment_request_id, c.sent_id));
	SELECT * INTO c FROM alipayplus.cancellations x
	WHERE x.cancellation_id = $1 FOR UPDATE;
	IF EXISTS (SELECT 1 FROM alipayplus.cancel_attempts a
			   JOIN alipayplus.processor_runs p ON p.run_id = a.run_id
			   WHERE a.cancellation_id = $1 AND a.result_code = 'local.no_answer_yet'
				   AND a.completed_at IS NULL AND alipayplus._run_alive(p)) THEN
		RAISE EXCEPTION USING ERRCODE = 'object_in_use',
			MESSAGE = format('cancellation %s is being called by a processor run right now', $1),
			HINT = 'Its answer is applied when it comes (within alipayplus.timeout_ms); requeue it afterwards if it is still flagged.';
	END IF;
	IF c.state = 'CANCELLED' AND NOT c.needs_attention AND c.order_follow_at IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s is CANCELLED; there is nothing to requeue', $1);
	END IF;

	IF c.state = 'CANCELLED' THEN
		/* Alipay+ cancelled it; only the bound order has to follow */
		PERFORM alipayplus._order_follows(c);
		UPDATE alipayplus.cancellations x SET
			needs_attention = false, attention_reason = NULL, order_follow_at = NULL
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

/*
 * The orders of the bound table at the cancelling value that no
 * cancellation in progress will reach: no ledger row that knows the
 * order's request id (or its payment id and no request id) is CANCELLING
 * or flagged.  alipayplus.attention lists them, so that an order stranded
 * by whatever cause (a binding moved on purpose back to an old table, ids
 * corrected by hand, a flag closed without fixing the order) is seen.
 * Read as the table's owner.  A view's functions run with the reader's
 * rights: so this one is SECURITY DEFINER and callable by all, but answers
 * only a role that may read alipayplus.attention.
 */
CREATE FUNCTION alipayplus._stranded_orders(OUT request_id text, OUT payment_id text,
	OUT cancellation_id bigint, OUT state text)
RETURNS SETOF record
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	r text[];
	v_flagged boolean;
BEGIN
	IF NOT pg_catalog.has_table_privilege(alipayplus._outer_user(), 'alipayplus.attention', 'SELECT') THEN
		RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
			MESSAGE = 'permission denied for view alipayplus.attention';
	END IF;
	SELECT * INTO b FROM alipayplus.order_binding;
	IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = b.orders) THEN
		RETURN;
	END IF;
	FOR r IN SELECT * FROM alipayplus._order_exec(b.orders,
		format('SELECT %I::pg_catalog.text, %s FROM %s WHERE %I OPERATOR(pg_catalog.=) $1',
			   b.request_id_column,
			   CASE WHEN b.payment_id_column IS NULL THEN 'NULL'
					ELSE format('%I::pg_catalog.text', b.payment_id_column) END,
			   b.orders, b.status_column),
		ARRAY[b.cancelling_value], ARRAY[b.status_column])
	LOOP
		request_id := alipayplus._clean_id(r[1]);
		payment_id := alipayplus._clean_id(r[2]);
		cancellation_id := NULL;
		state := NULL;
		v_flagged := false;
		SELECT c.cancellation_id, c.state,
			c.needs_attention OR c.order_follow_at IS NOT NULL
		INTO cancellation_id, state, v_flagged
		FROM alipayplus.cancellations c
		WHERE c.payment_request_id = _stranded_orders.request_id
			OR (c.payment_request_id IS NULL
				AND c.payment_id = _stranded_orders.payment_id)
		ORDER BY (c.state = 'CANCELLING' OR c.needs_attention
				  OR c.order_follow_at IS NOT NULL) DESC, c.cancellation_id DESC
		LIMIT 1;
		IF state IS DISTINCT FROM 'CANCELLING' AND NOT coalesce(v_flagged, false) THEN
			RETURN NEXT;
		END IF;
	END LOOP;
END;
$$;
/* callable by all (see above), said outright: a fresh install grants it too */
GRANT EXECUTE ON FUNCTION alipayplus._stranded_orders() TO PUBLIC;

/* ---- issue 19, item 2: no rebinding that strands the orders of cancellations in progress ---- */

/* The binding lock, exclusive (src/ledger.c, lock_binding()) */
CREATE FUNCTION alipayplus._lock_binding()
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_lock_binding'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._lock_binding() FROM PUBLIC;

/*
 * Refuse a new binding that would leave orders of the current one behind:
 * an order of the bound table that is at the cancelling value can only
 * become cancelled through the ledger, which, once another table is bound,
 * would apply Alipay+'s answer to that table instead; the order would stay
 * cancelling for good, and the guard refuses every other change.  A new
 * binding that keeps the table, its id and status columns and the two
 * values (adding a payment id column, changing the initiation time or the
 * paid and failed values) strands nothing and is allowed, and so is any
 * binding while no order is cancelling.  The orders are read as the
 * table's owner, like every read of a user table.
 */
CREATE FUNCTION alipayplus._refuse_stranding_rebind(p_orders regclass,
	p_request_id_column name, p_status_column name, p_cancelled_value text,
	p_cancelling_value text, p_payment_id_column name)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
	r text[];
BEGIN
	/*
	 * First the binding lock, exclusive: the requests in flight, which
	 * hold it shared from before they read the binding, commit first; the
	 * statements below see what they marked (each takes a new snapshot)
	 */
	PERFORM alipayplus._lock_binding();
	SELECT * INTO b FROM alipayplus.order_binding FOR UPDATE;
	IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = b.orders) THEN
		RETURN;
	END IF;
	IF b.orders = p_orders AND b.request_id_column = p_request_id_column
	   AND b.status_column = p_status_column
	   AND b.cancelled_value = p_cancelled_value
	   AND b.cancelling_value = p_cancelling_value
	   AND (b.payment_id_column IS NULL
			OR b.payment_id_column IS NOT DISTINCT FROM p_payment_id_column) THEN
		RETURN;
	END IF;
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION USING ERRCODE = 'active_sql_transaction',
			MESSAGE = 'alipayplus_bind_orders must replace a binding at the READ COMMITTED isolation level',
			DETAIL = 'Under REPEATABLE READ or SERIALIZABLE it could miss orders that cancel requests committed after the transaction''s snapshot, and strand them.',
			HINT = 'Run it outside a transaction block, or in one begun with ISOLATION LEVEL READ COMMITTED.';
	END IF;
	SELECT x INTO r FROM alipayplus._order_exec(b.orders,
		format('SELECT pg_catalog.count(*)::pg_catalog.text, pg_catalog.min(%I::pg_catalog.text) FROM %s WHERE %I OPERATOR(pg_catalog.=) $1',
			   b.request_id_column, b.orders, b.status_column),
		ARRAY[b.cancelling_value], ARRAY[b.status_column]) x;
	IF r[1]::bigint > 0 THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cannot replace the binding of %s while %s of its orders are %L (the first is %s = %L)',
							 b.orders, r[1], b.cancelling_value, b.request_id_column, r[2]),
			DETAIL = 'Their cancellations are in progress or wait for a person; the ledger would apply Alipay+''s answers to the newly bound table, and these orders would stay cancelling for good.',
			HINT = 'Let the processor finish them (CALL alipayplus_run_cancellations()) and settle what alipayplus.attention lists, then bind again.';
	END IF;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._refuse_stranding_rebind(regclass, name, name, text, text, name) FROM PUBLIC;

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

	/* the orders of a cancellation in progress must stay bound (issue 19) */
	PERFORM alipayplus._refuse_stranding_rebind($1, $2, $3, $4, $5, $6);

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

/* ---- issue 18.1 (review): the sweep re-checks the status under the order row lock ---- */

/*
 * The stale-orders sweep re-checks each order's status under its row lock
 * (src/ledger.c, mark_cancelling): an order shipped or paid between
 * alipayplus_stale_orders and the queueing is skipped as not_pending,
 * never marked.  Any request of an order at the paid value keeps that it
 * was paid (late_payment_*), so alipayplus.attention shows it.
 */
DROP FUNCTION alipayplus._mark_cancelling(text, text, timestamptz);
CREATE FUNCTION alipayplus._mark_cancelling(p_payment_id text, p_request_id text,
	p_initiated_at timestamptz, p_only_pending boolean DEFAULT false)
RETURNS alipayplus.cancellations
AS 'MODULE_PATHNAME', 'alipayplus_mark_cancelling'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._mark_cancelling(text, text, timestamptz, boolean) FROM PUBLIC;

/* its grants (to the application, say) are kept for the new signature */
SELECT pg_catalog.set_config('alipayplus_upgrade.request_cancel_all_acl',
	coalesce(p.proacl::text, ''), true)
FROM pg_catalog.pg_proc p
WHERE p.oid = '@extschema@.alipayplus_request_cancel_all(text[], boolean)'::pg_catalog.regprocedure;
DROP FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean);
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
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean, boolean) FROM PUBLIC;
DO $$
DECLARE
	g record;
BEGIN
	FOR g IN SELECT a.grantee, a.is_grantable
		FROM pg_catalog.aclexplode(nullif(pg_catalog.current_setting(
				'alipayplus_upgrade.request_cancel_all_acl', true), '')::pg_catalog.aclitem[]) a
		JOIN pg_catalog.pg_proc p
			ON p.oid = '@extschema@.alipayplus_request_cancel_all(text[], boolean, boolean)'::pg_catalog.regprocedure
		WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
	LOOP
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean, boolean) TO %s%s',
			CASE WHEN g.grantee = 0 THEN 'PUBLIC'
				 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
			CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
	END LOOP;
END;
$$;

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

/*
 * Closing an item closes the reasons it had at that time: each reason
 * opens again when it arises after the close (a paid notification, the
 * deadline passing, the row falling overdue), and a CANCELLING row's
 * reasons with any attempt after the close; the times compared are clock
 * times (clock_timestamp), so a notification recorded after the close is
 * later than the close whenever its transaction began.
 */
/* the view alipayplus.attention of 1.3 is created in the last issue 15 section */

/*
 * A late notification is kept with the clock time it is recorded at, and
 * a later U or F does not replace a paid (S) one that is still open.
 */
CREATE OR REPLACE FUNCTION @extschema@.alipayplus_apply_payment_result(payment_request_id text,
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
		/*
		 * Kept with the time it is recorded (not the transaction's start),
		 * comparable with attention_closed_at.  A paid (S) one a person has
		 * not closed yet is never replaced by a later U or F: the payment
		 * may stand, and only the S says so.
		 */
		UPDATE alipayplus.cancellations x SET
			late_payment_status = $2, late_payment_code = $3,
			late_payment_at = pg_catalog.clock_timestamp()
		WHERE x.cancellation_id = c.cancellation_id
			AND NOT ($2 <> 'S' AND x.late_payment_status = 'S'
					 AND (x.attention_closed_at IS NULL
						  OR x.late_payment_at > x.attention_closed_at));
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
	/*
	 * A flagged CANCELLED row is a verified S whose bound order did not
	 * follow: its only remedy is alipayplus_requeue_cancellation, which
	 * needs the flag, so closing it would strand the order, unseen.  (A
	 * closed CANCELLING row can still be requeued.)
	 */
	IF c.needs_attention AND c.state = 'CANCELLED' THEN
		RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = format('cancellation %s cannot be closed: Alipay+ cancelled the payment and the bound order must follow', $1),
			DETAIL = format('The item says: %s', c.attention_reason),
			HINT = format('Fix what kept the order from being updated, then run alipayplus_requeue_cancellation(%s).', $1);
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
/* the view alipayplus.stats of 1.3 is created in the last issue 15 section */
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

/* ---- issue 18.3: pg_restore -j restores the whole ledger ---- */

ALTER TABLE alipayplus.cancel_attempts
	DROP CONSTRAINT cancel_attempts_cancellation_id_fkey;
COMMENT ON COLUMN alipayplus.cancel_attempts.cancellation_id IS
	'The ledger row (alipayplus.cancellations) the attempt was made for; kept by the ledger''s own code, not a foreign key, so that pg_restore -j can load the tables in any order';

/*
 * Without the key, nothing stopped a superuser's UPDATE or DELETE from
 * leaving attempts without their ledger row.  The ledger's code only ever
 * inserts attempts, and a restore only inserts (COPY), so the attempts
 * guard refuses DELETE, TRUNCATE and any UPDATE of what an attempt
 * recorded: its ledger row, the id it sent and Alipay+'s answer.  Only
 * attempted_at may be moved (as when testing the hourly figures).
 */
CREATE FUNCTION alipayplus._guard_attempts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = 'cannot truncate alipayplus.cancel_attempts: the ledger keeps every attempt',
			HINT = 'Attempts belong to their ledger rows, which are never deleted.';
	ELSIF TG_OP = 'DELETE' THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = format('cannot delete attempt %s of alipayplus.cancel_attempts: the ledger keeps every attempt', OLD.attempt_id),
			HINT = 'Attempts belong to their ledger rows, which are never deleted.';
	ELSIF (NEW.attempt_id, NEW.cancellation_id, NEW.sent_field, NEW.sent_id, NEW.request_time,
		   NEW.result_status, NEW.result_code, NEW.result_message, NEW.http_status,
		   NEW.signature_verified, NEW.latency_ms, NEW.error_detail, NEW.acquirer_id,
		   NEW.psp_id, NEW.caller)
		  IS DISTINCT FROM
		  (OLD.attempt_id, OLD.cancellation_id, OLD.sent_field, OLD.sent_id, OLD.request_time,
		   OLD.result_status, OLD.result_code, OLD.result_message, OLD.http_status,
		   OLD.signature_verified, OLD.latency_ms, OLD.error_detail, OLD.acquirer_id,
		   OLD.psp_id, OLD.caller) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = format('cannot change attempt %s of alipayplus.cancel_attempts: it records a request and its answer', OLD.attempt_id),
			DETAIL = 'Its ledger row, the id it sent and Alipay+''s answer are kept as they were; only attempted_at can be changed.';
	END IF;
	RETURN NEW;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._guard_attempts() FROM PUBLIC;
CREATE TRIGGER cancel_attempts_guard BEFORE UPDATE OR DELETE ON alipayplus.cancel_attempts
	FOR EACH ROW EXECUTE FUNCTION alipayplus._guard_attempts();
ALTER TABLE alipayplus.cancel_attempts ENABLE ALWAYS TRIGGER cancel_attempts_guard;
CREATE TRIGGER cancel_attempts_guard_truncate BEFORE TRUNCATE ON alipayplus.cancel_attempts
	FOR EACH STATEMENT EXECUTE FUNCTION alipayplus._guard_attempts();
ALTER TABLE alipayplus.cancel_attempts ENABLE ALWAYS TRIGGER cancel_attempts_guard_truncate;

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
REVOKE ALL ON FUNCTION alipayplus.check_ledger() FROM PUBLIC;
COMMENT ON FUNCTION alipayplus.check_ledger() IS
	'Attempts without their ledger row, or that sent another id than it (none when the ledger is whole)';

/* ---- issue 18.8: refuse in a read-only transaction or on a standby ---- */

/*
 * Raises 25006 in a read-only transaction or on a server in recovery;
 * called first by every function that sends or queues a cancellation
 * (the C ones call it directly).
 */
CREATE FUNCTION alipayplus._refuse_read_only()
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_refuse_read_only'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._refuse_read_only() FROM PUBLIC;

/* ---- issue 16: every request on record before it leaves; the claim-then-call pipeline (issue 14) ---- */

/*
 * Set on a CANCELLED row whose bound order has yet to follow: the apply
 * of its verified S was cut by the caller's interrupt; the next
 * processor run updates the order (alipayplus._follow_orders).
 */
ALTER TABLE alipayplus.cancellations
	ADD COLUMN order_follow_at timestamptz,
	ADD CONSTRAINT cancellations_order_follow_check CHECK (
		order_follow_at IS NULL OR (state = 'CANCELLED' AND NOT needs_attention));
CREATE INDEX cancellations_order_follow ON alipayplus.cancellations (order_follow_at)
	WHERE order_follow_at IS NOT NULL;

/*
 * A CANCELLED row's bound order follows the ledger: the order (found by
 * its request id when the row knows it) is set to the bound cancelled
 * value, with the order table owner's rights.  The order row is locked
 * first, as on every path.
 */
CREATE FUNCTION alipayplus._order_follows(c alipayplus.cancellations)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	b alipayplus.order_binding;
BEGIN
	SELECT * INTO b FROM alipayplus.order_binding;
	IF FOUND THEN
		PERFORM alipayplus._set_order_status(
			CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
			coalesce(c.payment_request_id, c.sent_id), b.cancelled_value,
			c.sent_field, c.sent_id);
	END IF;
END;
$$;

/*
 * The bound orders still to follow their CANCELLED ledger rows
 * (order_follow_at: since when; the apply of a verified S was cut by the
 * caller's query cancel or statement_timeout, src/ledger.c), at most
 * max_count and until p_until, each in a subtransaction of its own;
 * called by every processor run when it starts (src/processor.c).  An
 * order locked by someone else is left for the next run (order_follow_at
 * stays, so that alipayplus.attention lists one still waiting after 10
 * minutes); an order whose update fails (its owner's trigger refuses)
 * flags the ledger row for a person, as when the first apply fails.  An
 * update cut again (57014: the caller's interrupt, or a trigger that says
 * so) flags the row too, so that one order cannot hold up the queue run
 * after run; the cancel is then noted for the processor
 * (alipayplus_cancel.interrupted), which stops as on any interrupt.
 * Returns how many orders followed.
 */
CREATE FUNCTION alipayplus._follow_orders(max_count integer, p_until timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c alipayplus.cancellations;
	n integer := 0;
	v_state text;
	v_msg text;
	v_err text;
BEGIN
	FOR c IN
		SELECT * FROM alipayplus.cancellations x
		WHERE x.order_follow_at <= pg_catalog.now()
		ORDER BY x.order_follow_at, x.cancellation_id
		LIMIT max_count
	LOOP
		EXIT WHEN pg_catalog.clock_timestamp() >= p_until;
		BEGIN
			PERFORM alipayplus._lock_order(
				CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
				coalesce(c.payment_request_id, c.sent_id), true);
			SELECT * INTO c FROM alipayplus.cancellations x
			WHERE x.cancellation_id = c.cancellation_id AND x.order_follow_at IS NOT NULL
			FOR UPDATE SKIP LOCKED;
			IF FOUND THEN
				PERFORM alipayplus._order_follows(c);
				UPDATE alipayplus.cancellations x SET order_follow_at = NULL
				WHERE x.cancellation_id = c.cancellation_id;
				n := n + 1;
			END IF;
		/* OTHERS alone does not catch a query cancel (57014) */
		EXCEPTION WHEN query_canceled OR OTHERS THEN
			GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
			IF v_state <> '55P03' THEN
				UPDATE alipayplus.cancellations x SET
					order_follow_at = NULL, needs_attention = true,
					attention_reason = pg_catalog.format('Alipay+ cancelled the payment (verified S), but the bound order could not be updated: %s (SQLSTATE %s); fix that, then run alipayplus_requeue_cancellation(%s)',
						v_msg, v_state, c.cancellation_id)
				WHERE x.cancellation_id = c.cancellation_id
				RETURNING x.attention_reason INTO v_err;
				RAISE WARNING '%', v_err;
			END IF;
			IF v_state = '57014' THEN
				PERFORM pg_catalog.set_config('alipayplus_cancel.interrupted', v_msg, true);
				RETURN n;
			END IF;
		END;
	END LOOP;
	RETURN n;
END;
$$;
REVOKE ALL ON FUNCTION alipayplus._order_follows(alipayplus.cancellations) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._follow_orders(integer, timestamptz) FROM PUBLIC;

/*
 * An attempt is put on record, committed, before its request leaves
 * (result_code 'local.no_answer_yet', completed_at NULL) and completed once
 * with its answer or the reason there is none.  Attempts recorded before
 * 1.3 keep completed_at NULL (not known).
 */
ALTER TABLE alipayplus.cancel_attempts
	ADD COLUMN completed_at timestamptz,
	ADD COLUMN run_id bigint;
ALTER TABLE alipayplus.cancel_attempts
	ALTER COLUMN completed_at SET DEFAULT pg_catalog.clock_timestamp();
/* the calls in flight, looked up by the row they are for (the claim) */
CREATE INDEX cancel_attempts_no_answer_yet ON alipayplus.cancel_attempts (cancellation_id)
	WHERE result_code = 'local.no_answer_yet';

/*
 * The processor's claim reads the due index in its own order (next_attempt_at,
 * then id) and stops after the rows it takes: a burst queued in one
 * transaction shares one next_attempt_at, and an index of that alone had
 * the claim sort the whole queue each time.  Rebuilt: DROP INDEX locks
 * alipayplus.cancellations (ACCESS EXCLUSIVE) until the update commits, so
 * processors, the worker and readers of the ledger wait for the rebuild.
 */
DROP INDEX alipayplus.cancellations_due;
CREATE INDEX cancellations_due ON alipayplus.cancellations (next_attempt_at, cancellation_id)
	WHERE state = 'CANCELLING' AND NOT needs_attention;

/* a run's row is written when it starts; pid and backend_start name its backend */
ALTER TABLE alipayplus.processor_runs
	ALTER COLUMN finished_at DROP NOT NULL,
	ADD COLUMN pid integer,
	ADD COLUMN backend_start timestamptz,
	ADD COLUMN caller text;
COMMENT ON TABLE alipayplus.processor_runs IS
	'One row per processor run, written when it starts (stopped_because ''running'') and finished when it stops; ''ended unfinished: ...'' is a run whose backend ended';

INSERT INTO alipayplus.result_policy (result_code, action, note, builtin) VALUES
	('local.no_answer_yet', 'retry', 'the request is on its way; its answer is not recorded yet', true),
	('local.interrupted', 'retry', 'no answer: a query cancel or shutdown ended the call after the request left; the outcome is unknown', true),
	('local.statement_timeout', 'retry', 'no answer before the caller''s statement_timeout ended the call; the outcome is unknown', true),
	('local.time_budget', 'retry', 'no answer before the run''s time_budget ended the call; the outcome is unknown', true),
	('local.crashed', 'retry', 'no answer: the backend making the call ended (pg_terminate_backend, a crash) or its claim expired before the answer was recorded; the outcome is unknown', true);

/* the guard lets a request on record be completed once, and nothing else */
CREATE OR REPLACE FUNCTION alipayplus._guard_attempts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = 'cannot truncate alipayplus.cancel_attempts: the ledger keeps every attempt',
			HINT = 'Attempts belong to their ledger rows, which are never deleted.';
	ELSIF TG_OP = 'DELETE' THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = format('cannot delete attempt %s of alipayplus.cancel_attempts: the ledger keeps every attempt', OLD.attempt_id),
			HINT = 'Attempts belong to their ledger rows, which are never deleted.';
	ELSIF OLD.result_code = 'local.no_answer_yet' AND OLD.completed_at IS NULL
		  AND NEW.completed_at IS NOT NULL AND NEW.result_code <> 'local.no_answer_yet'
		  AND (NEW.attempt_id, NEW.cancellation_id, NEW.sent_field, NEW.sent_id,
			   NEW.request_time, NEW.caller, NEW.run_id)
			  IS NOT DISTINCT FROM
			  (OLD.attempt_id, OLD.cancellation_id, OLD.sent_field, OLD.sent_id,
			   OLD.request_time, OLD.caller, OLD.run_id) THEN
		/* a request on record gets its answer, once */
		RETURN NEW;
	ELSIF (NEW.attempt_id, NEW.cancellation_id, NEW.sent_field, NEW.sent_id, NEW.request_time,
		   NEW.result_status, NEW.result_code, NEW.result_message, NEW.http_status,
		   NEW.signature_verified, NEW.latency_ms, NEW.error_detail, NEW.acquirer_id,
		   NEW.psp_id, NEW.caller, NEW.completed_at, NEW.run_id)
		  IS DISTINCT FROM
		  (OLD.attempt_id, OLD.cancellation_id, OLD.sent_field, OLD.sent_id, OLD.request_time,
		   OLD.result_status, OLD.result_code, OLD.result_message, OLD.http_status,
		   OLD.signature_verified, OLD.latency_ms, OLD.error_detail, OLD.acquirer_id,
		   OLD.psp_id, OLD.caller, OLD.completed_at, OLD.run_id) THEN
		RAISE EXCEPTION USING ERRCODE = 'ZA001',
			MESSAGE = format('cannot change attempt %s of alipayplus.cancel_attempts: it records a request and its answer', OLD.attempt_id),
			DETAIL = 'Its ledger row, the id it sent and Alipay+''s answer are kept as they were; only attempted_at can be changed, and a request on record without an answer yet is completed once by the processor.';
	END IF;
	RETURN NEW;
END;
$$;
/*
 * The processor: the claim-then-call pipeline of src/processor.c.  Up to
 * alipayplus.max_concurrency calls in flight; each slot is refilled as
 * soon as its answer is settled.  A row is claimed (SKIP LOCKED, the bound
 * order taken without waiting, busy ones left, unusable ones flagged),
 * leased, and given an attempt row "no answer yet" with the parameters it
 * will send, before its request leaves; the answer completes it.  This
 * form runs in the caller's transaction: it never commits, so everything
 * rolls back with the caller.
 */
CREATE OR REPLACE FUNCTION @extschema@.alipayplus_process_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds', continue_run bigint DEFAULT NULL)
RETURNS TABLE (run_id bigint, claimed integer, cancelled integer, retrying integer,
	attention integer, unanswered integer, busy integer, elapsed_ms numeric,
	last_error text)
AS 'MODULE_PATHNAME', 'alipayplus_process_cancellations'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) IS
	'Call cancelPayment for due CANCELLING rows (SKIP LOCKED) in the caller''s transaction, bounded by max_count and time_budget';

/*
 * The pipeline's steps in SQL (called by src/processor.c as the
 * extension's owner; not for PUBLIC).
 *
 * A run's row, written when it starts: pid and backend_start name the
 * backend, so that a run whose backend ended without finishing it is
 * recognised.
 */
CREATE FUNCTION alipayplus._run_begin(p_caller text)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	INSERT INTO alipayplus.processor_runs
		(started_at, finished_at, claimed, cancelled, retrying, attention,
		 unanswered, busy, stopped_because, pid, backend_start, caller)
	SELECT pg_catalog.clock_timestamp(), NULL, 0, 0, 0, 0, 0, 0, 'running',
		pg_catalog.pg_backend_pid(), s.backend_start, p_caller
	FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) s
	RETURNING run_id;
END;

/*
 * Whether processor run x is still working: not finished, and its backend
 * holds the run's session-level lock on the object (this database,
 * alipayplus.processor_runs, the low 32 bits of the run id, 0), which the
 * run takes when it begins and lets go when it ends; an abort and the
 * session's end let it go too, and no SQL can take or release it
 * (src/processor.c).  pg_locks is read afresh at every call
 * (pg_stat_activity would be as of the transaction's first look).  The
 * run's claims are its own while it works, however long an answer takes to
 * apply (an order owner's slow trigger): they are never reaped.
 */
CREATE FUNCTION alipayplus._run_alive(x alipayplus.processor_runs)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT x.finished_at IS NULL AND x.stopped_because = 'running'
		AND EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
					WHERE l.locktype = 'object' AND l.pid = x.pid AND l.granted
						AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
										  WHERE d.datname = pg_catalog.current_database())
						AND l.classid = 'alipayplus.processor_runs'::pg_catalog.regclass
						AND l.objid = pg_catalog.oid(x.run_id OPERATOR(pg_catalog.&) 4294967295)
						AND l.objsubid = 0);
END;

/*
 * Runs no longer working (alipayplus._run_alive: their backend is gone, or
 * has moved on after an error ended them, or is this one) are said to have
 * ended unfinished, and the attempts nobody will complete (their run
 * ended; an attempt of no run, its lease expired) are returned, their
 * ledger rows locked (SKIP LOCKED: one being settled right now is left),
 * to be completed as local.crashed.  p_run's own attempts, and those of a
 * run still working, are never among them.
 */
CREATE FUNCTION alipayplus._stale_attempts(p_run bigint)
RETURNS TABLE (attempt_id bigint, cancellation_id bigint, sent_field text,
	sent_id text, request_time text, why text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE alipayplus.processor_runs x SET
		finished_at = pg_catalog.clock_timestamp(),
		stopped_because = CASE WHEN x.pid = pg_catalog.pg_backend_pid()
				OR EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(x.pid) s
						   WHERE s.backend_start = x.backend_start)
			THEN 'ended unfinished: an error ended the run; its calls without an answer are recorded as local.crashed'
			ELSE 'ended unfinished: its backend exited during the run (pg_terminate_backend, a crash or kill); its calls without an answer are recorded as local.crashed' END
	WHERE x.finished_at IS NULL AND x.stopped_because = 'running'
		AND x.run_id IS DISTINCT FROM p_run
		AND (x.pid = pg_catalog.pg_backend_pid() OR NOT alipayplus._run_alive(x));
	RETURN QUERY
	SELECT a.attempt_id, a.cancellation_id, a.sent_field, a.sent_id, a.request_time,
		CASE WHEN a.run_id IS NOT NULL
			 THEN pg_catalog.format('processor run %s ended before the answer was recorded', a.run_id)
			 ELSE pg_catalog.format('the claim expired at %s without an answer recorded', c.next_attempt_at) END
	FROM alipayplus.cancel_attempts a
	JOIN alipayplus.cancellations c ON c.cancellation_id = a.cancellation_id
	LEFT JOIN alipayplus.processor_runs p ON p.run_id = a.run_id
	WHERE a.result_code = 'local.no_answer_yet' AND a.completed_at IS NULL
		AND (p_run IS NULL OR a.run_id IS DISTINCT FROM p_run)
		AND (p.finished_at IS NOT NULL
			 OR (a.run_id IS NOT NULL AND p.run_id IS NULL)
			 OR (a.run_id IS NULL AND c.next_attempt_at <= pg_catalog.clock_timestamp()))
	ORDER BY a.attempt_id
	FOR UPDATE OF c SKIP LOCKED;
END;
$$;

/*
 * Claim up to p_width due rows for run p_run: SKIP LOCKED; each one's
 * bound order taken without waiting (by its request id when known): a
 * locked order is left for later ('busy'), one that cannot be used is
 * flagged ('flagged'); the others ('call') are leased (next_attempt_at
 * moved ahead by alipayplus.timeout_ms and p_margin) and given an attempt
 * row "no answer yet" with the request they will send (p_request_time).
 * Rows of p_skip are not claimed.
 */
CREATE FUNCTION alipayplus._claim(p_run bigint, p_width integer,
	p_request_time text, p_caller text, p_lease interval, p_skip bigint[])
RETURNS TABLE (kind text, cancellation_id bigint, attempt_id bigint,
	sent_field text, sent_id text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_rows alipayplus.cancellations[];
	c alipayplus.cancellations;
	v_ok bigint[] := '{}';
	v_err text;
	v_bound boolean := EXISTS (SELECT 1 FROM alipayplus.order_binding);
	/* a value, not a call: the due index's scan ends at the first row not due */
	v_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
	v_rows := ARRAY(
		SELECT x FROM alipayplus.cancellations x
		WHERE x.state = 'CANCELLING' AND NOT x.needs_attention
			AND x.next_attempt_at <= v_now
			AND x.cancellation_id <> ALL (p_skip)
			/*
			 * A call of a run still working is its own (_stale_attempts).
			 * OFFSET 0 keeps this a lookup of the row's own attempts, made
			 * only for the rows read: planned as a join, with the ledger's
			 * statistics stale (the worker's burst), each row was checked
			 * against a scan of every call in flight.
			 */
			AND NOT EXISTS (SELECT 1 FROM alipayplus.cancel_attempts a
							WHERE a.cancellation_id = x.cancellation_id
								AND a.result_code = 'local.no_answer_yet'
								AND a.completed_at IS NULL
							OFFSET 0)
		ORDER BY x.next_attempt_at, x.cancellation_id
		LIMIT p_width
		FOR UPDATE SKIP LOCKED);
	FOREACH c IN ARRAY v_rows LOOP
		kind := 'call';
		IF v_bound THEN
			v_err := NULL;
			BEGIN
				/* by its request id when known (issue 19, item 3) */
				PERFORM alipayplus._lock_order(
					CASE WHEN c.payment_request_id IS NULL THEN c.sent_field ELSE 'paymentRequestId' END,
					coalesce(c.payment_request_id, c.sent_id), true);
			EXCEPTION
				WHEN lock_not_available THEN
					kind := 'busy';
				WHEN OTHERS THEN
					GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT;
			END;
			IF v_err IS NOT NULL THEN
				UPDATE alipayplus.cancellations x SET
					needs_attention = true, next_attempt_at = NULL,
					attention_reason = format('the bound order cannot be used: %s; fix the order row, then run alipayplus_requeue_cancellation(%s)',
											  v_err, x.cancellation_id)
				WHERE x.cancellation_id = c.cancellation_id;
				kind := 'flagged';
			END IF;
		END IF;
		IF kind <> 'call' THEN
			cancellation_id := c.cancellation_id;
			attempt_id := NULL;
			sent_field := c.sent_field;
			sent_id := c.sent_id;
			RETURN NEXT;
			CONTINUE;
		END IF;
		v_ok := v_ok || c.cancellation_id;
	END LOOP;
	UPDATE alipayplus.cancellations x SET
		next_attempt_at = pg_catalog.clock_timestamp() + p_lease
	WHERE x.cancellation_id = ANY (v_ok);
	RETURN QUERY
	INSERT INTO alipayplus.cancel_attempts AS x
		(cancellation_id, sent_field, sent_id, request_time, result_status, result_code,
		 result_message, caller, run_id, completed_at)
	SELECT y.cancellation_id, y.sent_field, y.sent_id, p_request_time, 'U', 'local.no_answer_yet',
		'no answer yet: the request is on its way', p_caller, p_run, NULL
	FROM alipayplus.cancellations y
	WHERE y.cancellation_id = ANY (v_ok)
	ORDER BY y.next_attempt_at, y.cancellation_id
	RETURNING 'call'::text, x.cancellation_id, x.attempt_id, x.sent_field, x.sent_id;
END;
$$;

/*
 * The earliest due time of a row the processor would claim (for the
 * background worker's sleep)
 */
CREATE FUNCTION alipayplus._next_due()
RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT min(x.next_attempt_at) FROM alipayplus.cancellations x
		WHERE x.state = 'CANCELLING' AND NOT x.needs_attention);

/*
 * For long queues: the pipeline, committing as it goes (each claim and
 * each group of settled answers in a short transaction of its own), so
 * that a crash, a cancel or a timeout loses nothing that was settled and
 * other sessions see the progress.  With progress set, a NOTICE every that
 * often: done, left, rate, and the time the rest will take at that rate.
 * Raises ZA004 at the end (after committing) when the gateway answered
 * none of its calls.
 */
CREATE OR REPLACE PROCEDURE @extschema@.alipayplus_process_backlog(max_count integer DEFAULT 1000000,
	time_budget interval DEFAULT '1 hour', progress interval DEFAULT '5 seconds')
AS 'MODULE_PATHNAME', 'alipayplus_process_backlog'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_process_backlog(integer, interval, interval) IS
	'For long queues: the processor (alipayplus.max_concurrency calls in flight), committing as it goes, with progress NOTICEs';

/* pg_cron's procedure: the same pipeline, without progress NOTICEs */
CREATE OR REPLACE PROCEDURE @extschema@.alipayplus_run_cancellations(max_count integer DEFAULT 100,
	time_budget interval DEFAULT '50 seconds')
AS 'MODULE_PATHNAME', 'alipayplus_run_cancellations'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) IS
	'For pg_cron: the processor, committing as it goes; fails (ZA004) when the gateway answered nothing';

REVOKE ALL ON FUNCTION alipayplus._run_begin(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._run_alive(alipayplus.processor_runs) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._stale_attempts(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._claim(bigint, integer, text, text, interval, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._next_due() FROM PUBLIC;

/* ---- issue 14: the background worker is woken by the commit ---- */

CREATE FUNCTION alipayplus._wake_worker()
RETURNS trigger
AS 'MODULE_PATHNAME', 'alipayplus_wake_worker'
LANGUAGE C;
REVOKE ALL ON FUNCTION alipayplus._wake_worker() FROM PUBLIC;
COMMENT ON FUNCTION alipayplus._wake_worker() IS
	'Trigger: wake the background worker when the transaction commits';
CREATE TRIGGER cancellations_wake_worker AFTER INSERT OR UPDATE OF next_attempt_at, order_follow_at ON alipayplus.cancellations
	FOR EACH ROW WHEN ((NEW.state = 'CANCELLING' AND NEW.next_attempt_at IS NOT NULL
		AND NOT NEW.needs_attention) OR NEW.order_follow_at IS NOT NULL)
	EXECUTE FUNCTION alipayplus._wake_worker();

/* ---- issue 15: inquiryPayment ---- */

/*
 * alipayplus_inquire_payment(): one signed inquiryPayment call through the
 * cancel call's path (src/cancel.c, an operation of its own), recorded in
 * the new table alipayplus.inquiries.  The setting alipayplus.inquiry_path
 * (src/settings.c) holds its path.
 */
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

REVOKE ALL ON TABLE alipayplus.inquiries FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('alipayplus.inquiries', '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('alipayplus.inquiries', 'inquiry_id'), '');

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
REVOKE ALL ON FUNCTION alipayplus._call_inquiry(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._inquire(text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_inquire_payment(text, text) FROM PUBLIC;

/* ---- issue 15: the resolver queue (first step) ---- */

/*
 * alipayplus_request_resolve() queues a payment of unknown result,
 * alipayplus._resolve_step() applies one inquiry's answer to it (paid,
 * failed, attention, cancel, wait), alipayplus_process_resolutions() works
 * the queue one inquiry after the other; the table alipayplus.resolutions;
 * alipayplus._refuse_read_only_to() (src/cancel.c).
 */
CREATE FUNCTION alipayplus._refuse_read_only_to(what text)
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_refuse_read_only_to'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION alipayplus._refuse_read_only_to(text) FROM PUBLIC;

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
REVOKE ALL ON TABLE alipayplus.resolutions FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._resolve_step(bigint, alipayplus.inquiries) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._resolve_binding() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_resolve(text, text, timestamptz, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_process_resolutions(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._claim_resolutions(bigint, integer, text, interval, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION alipayplus._settle_inquiry(bigint, boolean, timestamptz, integer, text, text, text, text, text, boolean, double precision, text, text, text, text, text, text, timestamptz, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_resolve_stale(interval, interval, interval) FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.alipayplus_resolve_backlog(integer, interval, interval) FROM PUBLIC;

/* ---- issue 15: the resolver on the pipeline: the worker's sleep, what a person and ops see ---- */

/* a resolution made due wakes the background worker too (40_processor.sql) */
CREATE TRIGGER resolutions_wake_worker AFTER INSERT OR UPDATE OF next_inquiry_at ON alipayplus.resolutions
	FOR EACH ROW WHEN (NEW.state = 'RESOLVING' AND NEW.next_inquiry_at IS NOT NULL)
	EXECUTE FUNCTION alipayplus._wake_worker();


/*
 * The background worker sleeps until a resolution's next inquiry too;
 * alipayplus.attention lists the resolutions a person must decide (and
 * ones left waiting for their inquiry); alipayplus.stats gains the
 * resolutions' columns at its end.  The views are created with pg_catalog
 * alone on the search_path, as in 60_views.sql.
 */
/*
 * The earliest due time of a row the processor would claim (for the
 * background worker's sleep): a cancellation's next attempt or a
 * resolution's next inquiry (issue 15)
 */
CREATE OR REPLACE FUNCTION alipayplus._next_due()
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

SET search_path = pg_catalog, pg_temp;
CREATE OR REPLACE VIEW alipayplus.attention AS
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
SET search_path = @extschema@;
