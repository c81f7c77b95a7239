/*
 * extension/src/90_grants.sql
 *	  Privileges, last, once every object exists: nothing that holds data or
 *	  signs is PUBLIC.  Tables, views and internal functions of the schema
 *	  alipayplus are revoked all at once; the functions in @extschema@ one by
 *	  one.  Granting them is up to the DBA (README, Security).
 */

\echo Use "CREATE EXTENSION alipayplus_cancel" to load this file. \quit

/* ------------------------------------------------------------------
 * Privileges: nothing that holds data or signs is PUBLIC
 * ------------------------------------------------------------------ */

REVOKE ALL ON SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA alipayplus FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_signature(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_cancel_payment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_inquire_payment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_resolve(text, text, timestamptz, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_process_resolutions(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_resolve_stale(interval, interval, interval) FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.alipayplus_resolve_backlog(integer, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_cancel(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_process_cancellations(integer, interval, bigint) FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.alipayplus_run_cancellations(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_requeue_cancellation(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_note_refund(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_apply_payment_result(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_bind_orders(regclass, name, name, text, text, name, name, text, text, text, text[]) FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.alipayplus_process_backlog(integer, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_request_cancel_all(text[], boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_stale_orders(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_queue_depth() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.alipayplus_close_attention(bigint, text) FROM PUBLIC;
/*
 * alipayplus_require_top_level keeps EXECUTE for PUBLIC: it reads nothing
 * and signs nothing, and the roles that run the processor call it.
 * alipayplus._stranded_orders is callable by all, because the view
 * alipayplus.attention calls it with its reader's rights: it answers only a
 * role that may read that view (50_guard.sql).
 */
GRANT EXECUTE ON FUNCTION alipayplus._stranded_orders() TO PUBLIC;
