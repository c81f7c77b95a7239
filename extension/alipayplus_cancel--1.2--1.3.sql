/*
 * alipayplus_cancel--1.2--1.3.sql
 *	  Upgrade of the alipayplus_cancel extension from 1.2 to 1.3 (also the
 *	  fourth step of every fresh install of 1.3).
 *
 * 1.3 changes, each in its own section below:
 *  - issue 18.3: a parallel restore (pg_restore -j) restores the whole
 *    ledger: the foreign key from alipayplus.cancel_attempts to
 *    alipayplus.cancellations goes.  Both are extension configuration
 *    tables, whose constraints exist before their data is loaded, and
 *    pg_dump's archive records no order between the two tables' data, so
 *    pg_restore -j loaded the attempts beside (or before) their ledger rows
 *    and the key refused every one.  Only the ledger's own SECURITY DEFINER
 *    code writes attempts, always for a ledger row it holds locked, and a
 *    ledger row can never be deleted (the guard), so no attempt can lose
 *    its row.
 *  - issue 18.6 (no SQL here): the library hides the calling session's
 *    temporary schema from the orders table owner's code instead of
 *    refusing sessions that have temporary objects (src/orders.c).
 *  - issue 18.8: every function that sends or queues a cancellation
 *    refuses first, with 25006, in a read-only transaction or on a server
 *    in recovery (src/cancel.c, aps_refuse_read_only);
 *    alipayplus_request_cancel_all refuses as a whole instead of reporting
 *    each id as an error.
 * Functions that change are replaced, never dropped, so no grant is lost.
 */

\echo Use "ALTER EXTENSION alipayplus_cancel UPDATE TO '1.3'" to load this file. \quit

/* ---- issue 18.3: pg_restore -j restores the whole ledger ---- */

ALTER TABLE alipayplus.cancel_attempts
	DROP CONSTRAINT cancel_attempts_cancellation_id_fkey;
COMMENT ON COLUMN alipayplus.cancel_attempts.cancellation_id IS
	'The ledger row (alipayplus.cancellations) the attempt was made for; kept by the ledger''s own code, not a foreign key, so that pg_restore -j can load the tables in any order';

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

CREATE OR REPLACE FUNCTION @extschema@.alipayplus_request_cancel_all(ids text[],
	by_payment_id boolean DEFAULT false)
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
	/* refused as a whole, before anything else, not reported id by id */
	PERFORM alipayplus._refuse_read_only();
	FOREACH v_id IN ARRAY coalesce($1, '{}') LOOP
		BEGIN
			SELECT count(*) INTO v_before FROM alipayplus.cancellations x
			WHERE CASE WHEN $2 THEN x.payment_id = v_id
					   ELSE x.sent_field = 'paymentRequestId' AND x.sent_id = v_id END;
			IF $2 THEN
				c := alipayplus._mark_cancelling(v_id, NULL, NULL);
			ELSE
				c := alipayplus._mark_cancelling(NULL, v_id, NULL);
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
							 WHEN '22023' THEN 'invalid_id'
							 WHEN '22001' THEN 'invalid_id'
							 WHEN '21000' THEN 'several_orders'
							 ELSE 'error' END,
				format('%s (SQLSTATE %s)', v_msg, v_state);
		END;
	END LOOP;
END;
$$;
COMMENT ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean) IS
	'Queue many cancellations at once; what cannot be cancelled is skipped and reported, one row per id';
