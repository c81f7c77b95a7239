/*
 * extension/src/50_guard.sql
 *	  Binding the shop's orders table (alipayplus_bind_orders) and the
 *	  guards: the triggers that keep cancelled orders cancelled on the bound
 *	  table, its partitions and children (an event trigger guards new ones),
 *	  and on the ledger itself.
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

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

/* The binding lock, exclusive (src/ledger.c, lock_binding()) */
CREATE FUNCTION alipayplus._lock_binding()
RETURNS void
AS 'MODULE_PATHNAME', 'alipayplus_lock_binding'
LANGUAGE C VOLATILE;

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

/*
 * The attempts too.  With no foreign key to their ledger rows (pg_restore
 * -j), nothing else would stop a superuser's UPDATE or DELETE from leaving
 * attempts without their ledger row.  The ledger's code inserts attempts
 * and completes, once, an attempt the processor put on record before its
 * request left ('local.no_answer_yet', completed_at NULL) with its answer;
 * a restore only inserts (COPY).  So the attempts guard refuses DELETE,
 * TRUNCATE and any other UPDATE of what an attempt recorded: its ledger
 * row, the request it sent, its run and Alipay+'s answer.  Only
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
CREATE TRIGGER cancel_attempts_guard BEFORE UPDATE OR DELETE ON alipayplus.cancel_attempts
	FOR EACH ROW EXECUTE FUNCTION alipayplus._guard_attempts();
ALTER TABLE alipayplus.cancel_attempts ENABLE ALWAYS TRIGGER cancel_attempts_guard;
CREATE TRIGGER cancel_attempts_guard_truncate BEFORE TRUNCATE ON alipayplus.cancel_attempts
	FOR EACH STATEMENT EXECUTE FUNCTION alipayplus._guard_attempts();
ALTER TABLE alipayplus.cancel_attempts ENABLE ALWAYS TRIGGER cancel_attempts_guard_truncate;
