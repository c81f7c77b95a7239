/*
 * alipayplus_cancel--1.1--1.2.sql
 *	  Upgrade of the alipayplus_cancel extension from 1.1 to 1.2 (also the
 *	  third step of every fresh install of 1.2).
 *
 * 1.2 moves the ledger's rules for one payment (mark it CANCELLING, record
 * an attempt, apply its result) from PL/pgSQL into C (src/ledger.c), where
 * each rule is one SQL statement prepared once per backend.  The rules and
 * their messages are unchanged; alipayplus_cancel_payment, the outbox and
 * the processor all use them.  Functions that change are replaced, so no
 * grant is lost; the three PL/pgSQL helpers the C code took over are
 * dropped (they were granted to nobody).  No table changes.
 */

\echo Use "ALTER EXTENSION alipayplus_cancel UPDATE TO '1.2'" to load this file. \quit

/*
 * Mark a payment CANCELLING in the ledger (and its bound order), creating
 * the ledger row if needed; returns the ledger row, locked.
 */
CREATE OR REPLACE FUNCTION alipayplus._mark_cancelling(p_payment_id text, p_request_id text,
	p_initiated_at timestamptz)
RETURNS alipayplus.cancellations
AS 'MODULE_PATHNAME', 'alipayplus_mark_cancelling'
LANGUAGE C VOLATILE;

/*
 * Record an answer (a row with the columns of alipayplus._call_cancel) for
 * the locked ledger row c and apply it, in a subtransaction; if applying
 * fails, the answer is recorded anyway and the row flagged.
 */
CREATE OR REPLACE FUNCTION alipayplus._settle(c alipayplus.cancellations, r record,
	p_caller text)
RETURNS alipayplus.cancel_attempts
AS 'MODULE_PATHNAME', 'alipayplus_settle'
LANGUAGE C VOLATILE STRICT;

CREATE OR REPLACE FUNCTION @extschema@.alipayplus_cancel_payment(payment_id text DEFAULT NULL,
	payment_request_id text DEFAULT NULL)
RETURNS TABLE (result_status text, result_code text, result_message text,
	acquirer_id text, psp_id text, attempt_id bigint, cancellation_id bigint,
	state text)
AS 'MODULE_PATHNAME', 'alipayplus_cancel_payment'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
ROWS 1;

DROP FUNCTION alipayplus._record_attempt(alipayplus.cancellations, record, text);
DROP FUNCTION alipayplus._apply_result(alipayplus.cancellations, alipayplus.cancel_attempts);
DROP FUNCTION alipayplus._result_not_applied(alipayplus.cancellations, alipayplus.cancel_attempts, text);
