/*-------------------------------------------------------------------------
 *
 * ledger.c
 *	  The ledger's rules for one payment: mark it CANCELLING, record an
 *	  attempt, apply its result.
 *
 * These are the rules of alipayplus.cancellations and cancel_attempts, in
 * one place: alipayplus_cancel_payment(), the transactional outbox
 * (alipayplus_request_cancel, through alipayplus._mark_cancelling) and the
 * processor (through alipayplus._settle) all come here.  Each rule is one
 * SQL statement below, prepared once per backend and kept (SPI_keepplan),
 * so a call pays for executing them and nothing else; the C around them
 * only decides which statement runs, in the order the rules say:
 *
 *	mark:	validate the ids; lock the bound order (if a table is bound),
 *			then the ids against a concurrent alipayplus_note_refund;
 *			refuse refunds; find the ledger row by the one id it sends, or
 *			create it if the payment is still in its cancel window; move
 *			the bound order to the cancelling (or cancelled) value.
 *	settle: in a subtransaction, record the attempt and apply it: S makes
 *			the row and the order CANCELLED; otherwise the result policy
 *			chooses a retry after backoff or a flag for a person.  If that
 *			fails (the order's trigger refused, a cancel arrived), the
 *			answer is recorded anyway and the row flagged, never lost.
 *
 * Work on a bound orders table goes through the SQL helpers
 * alipayplus._lock_order and _set_order_status, which run it as the
 * table's owner (src/orders.c); those statements are only run when a
 * table is bound.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/tuplestore.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_mark_cancelling);
PG_FUNCTION_INFO_V1(alipayplus_settle);
PG_FUNCTION_INFO_V1(alipayplus_cancel_payment);
PG_FUNCTION_INFO_V1(alipayplus_require_top_level);
PG_FUNCTION_INFO_V1(alipayplus_refund_blocked);
PG_FUNCTION_INFO_V1(alipayplus_outer_user);
PG_FUNCTION_INFO_V1(alipayplus_lock_binding);

/*
 * The transaction-level locks that serialise the paths that can give an id
 * a cancellation or note it as a refund (see lock_ids()): advisory lock
 * tags [database, "APSC", the id's bucket, APS_ID_LOCK_KIND].  SQL's
 * advisory-lock functions (pg_advisory_lock and the rest, src/backend/
 * utils/adt/lockfuncs.c) only ever build tags whose fourth field is 1
 * (one bigint key) or 2 (two int keys), so no role can take or hold these
 * locks from SQL.
 */
#define APS_ID_LOCK_SPACE	0x41505343
#define APS_ID_LOCK_BUCKETS	256
#define APS_ID_LOCK_KIND	3

/*
 * The binding lock (see lock_binding()): an advisory lock tag of the
 * database, "APSC", "BIND" and field4 = 4, which no SQL advisory lock
 * function can produce (they use 1 and 2)
 */
#define APS_BINDING_LOCK_KEY	0x42494e44
#define APS_BINDING_LOCK_FIELD4	4

/* The statements, in the order the rules use them */
enum
{
	Q_PRELUDE,
	Q_BINDING,
	Q_LOCK_ORDER,
	Q_ORDER_KIND,
	Q_NOTE_PAID,
	Q_REFUND,
	Q_HAS_CANCELLATION,
	Q_FIND,
	Q_OTHER_HOLDER,
	Q_ORDERS_WITH_PAYMENT_ID,
	Q_COMPLETE_IDS,
	Q_WINDOW,
	Q_INSERT,
	Q_SET_ORDER,
	Q_RECORD,
	Q_COMPLETE,
	Q_LOCK_ROW,
	Q_APPLY_S,
	Q_POLICY,
	Q_APPLY_OTHER,
	Q_NOT_APPLIED,
	Q_FOLLOW_LATER,
	Q_INTERRUPTED,
	Q_STORED_S,
	NUM_QUERIES
};

typedef struct LedgerQuery
{
	const char *sql;			/* @extschema@ stands for the extension's schema */
	int			nargs;
	Oid			argtypes[16];
} LedgerQuery;

static const LedgerQuery queries[NUM_QUERIES] = {
	/*
	 * Whether a table is bound (and its cancelling and cancelled values),
	 * and whether the ids given are a refund: what marking needs to know
	 * first, in one statement
	 */
	[Q_PRELUDE] = {
		"SELECT b.orders IS NOT NULL, b.cancelling_value, b.cancelled_value,"
		" EXISTS (SELECT 1 FROM alipayplus.known_refunds r"
		"  WHERE r.refund_request_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, $2])"
		"  OR r.refund_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, $2]))"
		" FROM (VALUES (1)) one (x) LEFT JOIN alipayplus.order_binding b ON true LIMIT 1",
		2, {TEXTOID, TEXTOID}
	},
	[Q_BINDING] = {
		"SELECT b.cancelling_value, b.cancelled_value FROM alipayplus.order_binding b",
		0, {0}
	},
	[Q_LOCK_ORDER] = {
		"SELECT o.order_found, o.request_id, o.payment_id, o.initiated_at, o.status"
		" FROM alipayplus._lock_order($1, $2) o",
		2, {TEXTOID, TEXTOID}
	},
	/*
	 * Whether the binding names its pending values, whether the order's
	 * status ($1, read under the order row lock) is one of them, and
	 * whether it is the paid value.  Read through to_jsonb: a 1.2 ledger
	 * not yet updated (ALTER EXTENSION) has no pending_values column.
	 */
	[Q_ORDER_KIND] = {
		"SELECT COALESCE(pg_catalog.jsonb_typeof(j.pv) OPERATOR(pg_catalog.=) 'array', false),"
		" COALESCE($1 OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT pg_catalog.jsonb_array_elements_text("
		"   CASE WHEN pg_catalog.jsonb_typeof(j.pv) OPERATOR(pg_catalog.=) 'array' THEN j.pv END))), false),"
		" COALESCE($1 OPERATOR(pg_catalog.=) b.paid_value, false)"
		" FROM alipayplus.order_binding b,"
		" LATERAL (SELECT pg_catalog.to_jsonb(b) OPERATOR(pg_catalog.->) 'pending_values') j (pv)",
		1, {TEXTOID}
	},
	/*
	 * The order was paid when its cancellation was requested: kept as a
	 * paid notification of the row, so that alipayplus.attention shows it
	 * (an unhandled one is never replaced)
	 */
	[Q_NOTE_PAID] = {
		"UPDATE alipayplus.cancellations x SET"
		" late_payment_status = 'S', late_payment_code = 'order.paid',"
		" late_payment_at = pg_catalog.clock_timestamp()"
		" WHERE x.cancellation_id OPERATOR(pg_catalog.=) $1"
		" AND x.late_payment_status IS DISTINCT FROM 'S' RETURNING x",
		1, {INT8OID}
	},
	/* refunds cannot be cancelled */
	[Q_REFUND] = {
		"SELECT 1 FROM alipayplus.known_refunds r"
		" WHERE r.refund_request_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, $2])"
		" OR r.refund_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, $2]) LIMIT 1",
		2, {TEXTOID, TEXTOID}
	},
	/* whether an id to be noted as a refund already has a cancellation */
	[Q_HAS_CANCELLATION] = {
		"SELECT 1 FROM alipayplus.cancellations x"
		" WHERE x.payment_request_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, $2])"
		" OR x.payment_id OPERATOR(pg_catalog.=) ANY (ARRAY[$1, $2]) LIMIT 1",
		2, {TEXTOID, TEXTOID}
	},
	/*
	 * One ledger row per payment, keyed by the id it sends ($1, $2), but
	 * found by either id it knows ($3, $4): a cancellation requested by
	 * payment id before the order stored that id is the same payment as
	 * one requested later by the order's request id.  A payment id alone
	 * is no proof (an order often holds a placeholder such as 'N/A' until
	 * Alipay+ answers): a row that knows a request id is found by that
	 * request id, or by the payment id it is keyed by when no request id
	 * is known; a row found by payment id never names another request id.
	 * Column 2: the row found by its request id names another payment id.
	 */
	[Q_FIND] = {
		"SELECT x, ($4 IS NOT NULL AND x.payment_id IS NOT NULL"
		" AND x.payment_id OPERATOR(pg_catalog.<>) $4)"
		" FROM alipayplus.cancellations x"
		" WHERE x.payment_request_id OPERATOR(pg_catalog.=) $3"
		" OR (x.payment_id OPERATOR(pg_catalog.=) $4"
		"  AND (x.payment_request_id IS NULL"
		"   OR ($3 IS NULL AND x.sent_field OPERATOR(pg_catalog.=) 'paymentId'"
		"    AND x.sent_id OPERATOR(pg_catalog.=) $4)))"
		" ORDER BY (x.sent_field OPERATOR(pg_catalog.=) $1"
		" AND x.sent_id OPERATOR(pg_catalog.=) $2) DESC, x.cancellation_id"
		" LIMIT 1 FOR UPDATE",
		4, {TEXTOID, TEXTOID, TEXTOID, TEXTOID}
	},
	/*
	 * With only a payment id: a row of another request id that holds it
	 * (the same payment, or another one with the same placeholder)
	 */
	[Q_OTHER_HOLDER] = {
		"SELECT x.cancellation_id, x.payment_request_id FROM alipayplus.cancellations x"
		" WHERE x.payment_id OPERATOR(pg_catalog.=) $1"
		" AND x.payment_request_id IS NOT NULL ORDER BY x.cancellation_id LIMIT 1",
		1, {TEXTOID}
	},
	/*
	 * How many rows of the bound table hold a payment id, read as the
	 * table's owner (with the 1.0 helper, so that this library also runs
	 * on the SQL of earlier versions until the extension is updated)
	 */
	[Q_ORDERS_WITH_PAYMENT_ID] = {
		"SELECT x[1] FROM alipayplus.order_binding b,"
		" alipayplus._order_exec(b.orders, pg_catalog.format("
		"'SELECT pg_catalog.count(*)::pg_catalog.text FROM %s WHERE %I OPERATOR(pg_catalog.=) $1',"
		" b.orders, b.payment_id_column), ARRAY[$1], ARRAY[b.payment_id_column]) x"
		" WHERE b.payment_id_column IS NOT NULL",
		1, {TEXTOID}
	},
	/* the ids a ledger row did not know yet, once an order names them */
	[Q_COMPLETE_IDS] = {
		"UPDATE alipayplus.cancellations x SET"
		" payment_request_id = COALESCE(x.payment_request_id, $2),"
		" payment_id = COALESCE(x.payment_id, $3)"
		" WHERE x.cancellation_id OPERATOR(pg_catalog.=) $1 RETURNING x",
		3, {INT8OID, TEXTOID, TEXTOID}
	},
	/* a new row only while Alipay+ still accepts cancelPayment */
	[Q_WINDOW] = {
		"SELECT @extschema@.alipayplus_cancel_window_open($1, pg_catalog.now()),"
		" @extschema@.alipayplus_cancel_deadline($1)",
		1, {TIMESTAMPTZOID}
	},
	[Q_INSERT] = {
		"INSERT INTO alipayplus.cancellations AS x"
		" (sent_field, sent_id, payment_request_id, payment_id, initiated_at,"
		" deadline, next_attempt_at)"
		" VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.now())"
		" ON CONFLICT (sent_field, sent_id) DO NOTHING RETURNING x",
		6, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	[Q_SET_ORDER] = {
		"SELECT alipayplus._set_order_status($1, $2, $3, $4, $5)",
		5, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID}
	},
	/* every attempt is kept */
	[Q_RECORD] = {
		"INSERT INTO alipayplus.cancel_attempts AS x"
		" (cancellation_id, sent_field, sent_id, request_time, http_status,"
		" result_status, result_code, result_message, acquirer_id, psp_id,"
		" signature_verified, latency_ms, error_detail, caller)"
		" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
		" RETURNING x",
		14, {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, BOOLOID, FLOAT8OID, TEXTOID, TEXTOID}
	},
	/*
	 * An attempt put on record before its request left (the pipeline's
	 * claim: result_code 'local.no_answer_yet', completed_at NULL) is
	 * completed, once, with what came back: the answer, or the reason there
	 * is none.  $15 is the attempt, $16 when the answer came.  Prepared on
	 * first use: it names a 1.3 column, and the library also runs on 1.2's
	 * tables until ALTER EXTENSION ... UPDATE.
	 */
	[Q_COMPLETE] = {
		"UPDATE alipayplus.cancel_attempts x SET"
		" http_status = $5, result_status = $6, result_code = $7,"
		" result_message = $8, acquirer_id = $9, psp_id = $10,"
		" signature_verified = $11, latency_ms = $12, error_detail = $13,"
		" completed_at = $16"
		" WHERE x.attempt_id OPERATOR(pg_catalog.=) $15"
		" AND x.cancellation_id OPERATOR(pg_catalog.=) $1"
		" AND x.sent_field OPERATOR(pg_catalog.=) $2 AND x.sent_id OPERATOR(pg_catalog.=) $3"
		" AND x.request_time OPERATOR(pg_catalog.=) $4"
		" AND x.result_code OPERATOR(pg_catalog.=) 'local.no_answer_yet'"
		" AND x.completed_at IS NULL AND $14 IS NOT NULL"
		" RETURNING x",
		16, {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, BOOLOID, FLOAT8OID, TEXTOID, TEXTOID, INT8OID,
		TIMESTAMPTZOID}
	},
	/* the pipeline settles a claimed row: locked only now */
	[Q_LOCK_ROW] = {
		"SELECT x FROM alipayplus.cancellations x"
		" WHERE x.cancellation_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
		1, {INT8OID}
	},
	/* S: cancelled, final, at the time the verified S arrived ($3) */
	[Q_APPLY_S] = {
		"UPDATE alipayplus.cancellations x SET"
		" state = 'CANCELLED', cancelled_at = $3,"
		" attempt_count = x.attempt_count OPERATOR(pg_catalog.+) 1,"
		" unanswered_streak = 0,"
		" last_result_status = a.result_status, last_result_code = a.result_code,"
		" last_result_message = a.result_message, last_attempt_at = a.attempted_at,"
		" next_attempt_at = NULL, needs_attention = false, attention_reason = NULL,"
		" acquirer_id = a.acquirer_id, psp_id = a.psp_id"
		" FROM alipayplus.cancel_attempts a"
		" WHERE a.attempt_id OPERATOR(pg_catalog.=) $2"
		" AND x.cancellation_id OPERATOR(pg_catalog.=) $1"
		" RETURNING x.state, x.needs_attention, x.attention_reason",
		3, {INT8OID, INT8OID, TIMESTAMPTZOID}
	},
	/* a DBA row (builtin = false) overrides the built-in one */
	[Q_POLICY] = {
		"SELECT p.action, p.note FROM alipayplus.result_policy p"
		" WHERE p.result_code OPERATOR(pg_catalog.=) $1 ORDER BY p.builtin LIMIT 1",
		1, {TEXTOID}
	},

	/*
	 * F or U: retry after backoff, or flag for a person when the policy
	 * says so or the retry budget is spent.  $3 is the action, $4 the
	 * policy's note, $5 the attempt number within the retry budget, $6
	 * alipayplus.max_attempts.
	 */
	[Q_APPLY_OTHER] = {
		"UPDATE alipayplus.cancellations x SET"
		" attempt_count = x.attempt_count OPERATOR(pg_catalog.+) 1,"
		" unanswered_streak = CASE WHEN alipayplus._unanswered(a.result_code)"
		"   THEN x.unanswered_streak OPERATOR(pg_catalog.+) 1 ELSE 0 END,"
		" last_result_status = a.result_status, last_result_code = a.result_code,"
		" last_result_message = a.result_message, last_attempt_at = a.attempted_at,"
		" needs_attention = ($3 OPERATOR(pg_catalog.=) 'attention'"
		"   OR $5 OPERATOR(pg_catalog.>=) $6),"
		" attention_reason = CASE"
		"   WHEN $3 OPERATOR(pg_catalog.=) 'attention' AND $4 IS NOT NULL THEN"
		"     pg_catalog.format('%s %s from Alipay+: %s', a.result_status, a.result_code, $4)"
		"   WHEN $3 OPERATOR(pg_catalog.=) 'attention' THEN"
		"     pg_catalog.format('%s %s from Alipay+, a code the result policy does not know:"
		" Alipay+ refused the cancellation and a person must decide (see last_result_message;"
		" connect_support@service.alipay.com)', a.result_status, a.result_code)"
		"   WHEN $5 OPERATOR(pg_catalog.>=) $6"
		"     AND a.result_code LIKE 'local.%' THEN"
		"     pg_catalog.format('no usable answer after %s attempts (last: %s %s%s); the cause"
		" is on our side or on the way to Alipay+, not a refusal by Alipay+: fix it, then run"
		" alipayplus_requeue_cancellation(%s)', $5, a.result_status, a.result_code,"
		"     ': ' OPERATOR(pg_catalog.||) $4, x.cancellation_id)"
		"   WHEN $5 OPERATOR(pg_catalog.>=) $6 THEN"
		"     pg_catalog.format('no result after %s attempts (last: %s %s); contact Alipay+"
		" support at connect_support@service.alipay.com', $5, a.result_status, a.result_code)"
		"   END,"
		" next_attempt_at = CASE"
		"   WHEN $3 OPERATOR(pg_catalog.=) 'attention' OR $5 OPERATOR(pg_catalog.>=) $6 THEN NULL"
		"   ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
		"     alipayplus._retry_delay($5, a.result_status OPERATOR(pg_catalog.=) 'F')"
		"   END"
		" FROM alipayplus.cancel_attempts a"
		" WHERE a.attempt_id OPERATOR(pg_catalog.=) $2"
		" AND x.cancellation_id OPERATOR(pg_catalog.=) $1"
		" RETURNING x.state, x.needs_attention, x.attention_reason",
		6, {INT8OID, INT8OID, TEXTOID, TEXTOID, INT4OID, INT4OID}
	},

	/*
	 * An answer that could not be applied: kept, and a person asked.  A
	 * verified S still makes the ledger row CANCELLED: Alipay+ has
	 * cancelled the payment, whatever the order table thinks.
	 */
	[Q_NOT_APPLIED] = {
		"UPDATE alipayplus.cancellations x SET"
		" state = CASE WHEN a.result_status OPERATOR(pg_catalog.=) 'S' THEN 'CANCELLED' ELSE x.state END,"
		" cancelled_at = CASE WHEN a.result_status OPERATOR(pg_catalog.=) 'S'"
		"   THEN COALESCE(x.cancelled_at, $4) ELSE x.cancelled_at END,"
		" acquirer_id = CASE WHEN a.result_status OPERATOR(pg_catalog.=) 'S' THEN a.acquirer_id ELSE x.acquirer_id END,"
		" psp_id = CASE WHEN a.result_status OPERATOR(pg_catalog.=) 'S' THEN a.psp_id ELSE x.psp_id END,"
		" attempt_count = x.attempt_count OPERATOR(pg_catalog.+) 1,"
		" unanswered_streak = 0,"
		" last_result_status = a.result_status, last_result_code = a.result_code,"
		" last_result_message = a.result_message, last_attempt_at = a.attempted_at,"
		" next_attempt_at = NULL,"
		" needs_attention = true,"
		" attention_reason = CASE WHEN a.result_status OPERATOR(pg_catalog.=) 'S' THEN"
		"   pg_catalog.format('Alipay+ cancelled the payment (verified S, attempt %s), but the bound order"
		" could not be updated: %s; fix that, then run alipayplus_requeue_cancellation(%s)',"
		"   a.attempt_id, $3, x.cancellation_id)"
		"   ELSE pg_catalog.format('Alipay+ answered %s %s, but the result could not be applied: %s;"
		" fix that, then run alipayplus_requeue_cancellation(%s)',"
		"   a.result_status, a.result_code, $3, x.cancellation_id)"
		"   END"
		" FROM alipayplus.cancel_attempts a"
		" WHERE a.attempt_id OPERATOR(pg_catalog.=) $2"
		" AND x.cancellation_id OPERATOR(pg_catalog.=) $1"
		" RETURNING x.state, x.needs_attention, x.attention_reason",
		4, {INT8OID, INT8OID, TEXTOID, TIMESTAMPTZOID}
	},

	/*
	 * The same for a verified S whose order update the caller's interrupt
	 * cut, not the order's own fault: no person is asked; the bound order
	 * follows at the next processor run (order_follow_at, since when;
	 * alipayplus._follow_orders).
	 */
	[Q_FOLLOW_LATER] = {
		"UPDATE alipayplus.cancellations x SET"
		" needs_attention = false, attention_reason = NULL,"
		" order_follow_at = pg_catalog.clock_timestamp()"
		" WHERE x.cancellation_id OPERATOR(pg_catalog.=) $1"
		" AND x.state OPERATOR(pg_catalog.=) 'CANCELLED'"
		" RETURNING x.state",
		1, {INT8OID}
	},
	/*
	 * tells the processor that a cancel arrived while an answer was
	 * applied, and which (its message)
	 */
	[Q_INTERRUPTED] = {
		"SELECT pg_catalog.set_config('alipayplus_cancel.interrupted', $1, true)",
		1, {TEXTOID}
	},
	/* an already cancelled payment answers with its own verified S */
	[Q_STORED_S] = {
		"SELECT a.result_code, a.result_message, a.acquirer_id, a.psp_id, a.attempt_id"
		" FROM alipayplus.cancel_attempts a"
		" WHERE a.cancellation_id OPERATOR(pg_catalog.=) $1"
		" AND a.result_status OPERATOR(pg_catalog.=) 'S'"
		" ORDER BY a.attempt_id DESC LIMIT 1",
		1, {INT8OID}
	},
};

/* The kept plans, and the ledger schema they were made for */
static SPIPlanPtr plans[NUM_QUERIES];
static Oid	plans_schema = InvalidOid;

/* What the rules need of a ledger row */
typedef struct LedgerRow
{
	Datum		row;			/* the alipayplus.cancellations row */
	int64		cancellation_id;
	char	   *sent_field;
	char	   *sent_id;
	char	   *payment_request_id;	/* both ids, as far as the row knows them */
	char	   *payment_id;
	char	   *state;
	int32		attempt_count;
	int32		retry_budget_start;
	/* the bound order's values, when a table is bound; read once per call */
	bool		binding_known;
	bool		bound;
	char	   *cancelling_value;
	char	   *cancelled_value;
} LedgerRow;

/* The outcome of settling one answer */
typedef struct Settled
{
	Datum		attempt;		/* the alipayplus.cancel_attempts row */
	char	   *state;			/* the ledger row's state afterwards */
	bool		attention;		/* and whether it is flagged for a person */
	bool		recorded;		/* false: the claimed attempt was no longer waiting */
} Settled;

/* The schema the extension was created in (PostgreSQL 15 has no function for it) */
static Oid
extension_schema(Oid ext)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			schema = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		schema = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return schema;
}

/* Prepare statement q from its text sql and keep the plan */
static void
keep_plan(int q, const char *sql)
{
	SPIPlanPtr	plan = SPI_prepare(sql, queries[q].nargs,
								   (Oid *) queries[q].argtypes);

	if (plan == NULL)
		elog(ERROR, "could not prepare a ledger statement: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep a ledger statement");
	plans[q] = plan;
}

/*
 * The statements' plans, made on first use and kept.  If the extension was
 * dropped and created again (its schema may differ), they are made anew:
 * the schema "alipayplus" belongs to the extension and comes and goes with
 * it, so its OID, a cheap cache look-up, tells whether the extension the
 * plans were made for is still the one installed.
 */
static void
prepare_plans(void)
{
	Oid			ledger_schema = get_namespace_oid("alipayplus", false);
	Oid			ext;
	char	   *schema;
	int			i;

	if (ledger_schema == plans_schema && plans[0] != NULL)
		return;
	ext = get_extension_oid("alipayplus_cancel", false);
	for (i = 0; i < NUM_QUERIES; i++)
	{
		if (plans[i] != NULL)
			SPI_freeplan(plans[i]);
		plans[i] = NULL;
	}
	plans_schema = InvalidOid;
	schema = get_namespace_name(extension_schema(ext));
	if (schema == NULL)
		elog(ERROR, "the schema of extension alipayplus_cancel was not found");
	schema = (char *) quote_identifier(schema);
	for (i = 0; i < NUM_QUERIES; i++)
	{
		const char *sql = queries[i].sql;
		const char *at;
		StringInfoData text;

		/*
		 * made on first use: they use 1.3 columns, and this library also
		 * serves a database still at an older version (see Q_COMPLETE)
		 */
		if (i == Q_COMPLETE || i == Q_FOLLOW_LATER)
			continue;
		initStringInfo(&text);
		while ((at = strstr(sql, "@extschema@")) != NULL)
		{
			appendBinaryStringInfo(&text, sql, at - sql);
			appendStringInfoString(&text, schema);
			sql = at + strlen("@extschema@");
		}
		appendStringInfoString(&text, sql);
		keep_plan(i, text.data);
	}
	plans_schema = ledger_schema;
}

/* Run statement q; returns the number of rows */
static uint64
run(int q, Datum *values, const char *nulls)
{
	int			rc;

	if (plans[q] == NULL)
	{
		/* a statement made on first use (no @extschema@ in it) */
		keep_plan(q, queries[q].sql);
	}
	rc = SPI_execute_plan(plans[q], values, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "ledger statement %d failed: %s", q,
			 SPI_result_code_string(rc));
	return SPI_processed;
}

/* Column col (from 1) of row i of the last statement, as text or NULL */
static char *
col_text(uint64 i, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, col);
}

static Datum
col_datum(uint64 i, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, col,
						 isnull);
}

static inline Datum
text_or_null(const char *s, char *nulls, int i)
{
	if (s == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	nulls[i] = ' ';
	return CStringGetTextDatum(s);
}

/*
 * Column "name" of a composite value, which must be of type "type".  The
 * rows come from the extension's own tables or from a caller of _settle:
 * a column of another type (a DBA's ALTER TABLE, a hand-made record) is
 * an error, never a misread.
 */
static Datum
field(HeapTupleHeader row, const char *name, Oid type, bool *isnull)
{
	TupleDesc	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(row),
											  HeapTupleHeaderGetTypMod(row));
	HeapTupleData tuple;
	Oid			found = InvalidOid;
	int			i;
	Datum		d;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
		{
			found = att->atttypid;
			break;
		}
	}
	if (found != type)
	{
		ReleaseTupleDesc(desc);
		if (found == InvalidOid)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("the row has no column \"%s\"", name)));
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of the row is of type %s, not %s",
						name, format_type_be(found), format_type_be(type))));
	}
	tuple.t_len = HeapTupleHeaderGetDatumLength(row);
	ItemPointerSetInvalid(&(tuple.t_self));
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = row;
	d = heap_getattr(&tuple, i + 1, desc, isnull);
	ReleaseTupleDesc(desc);
	return d;
}

static char *
field_text(HeapTupleHeader row, const char *name)
{
	bool		isnull;
	Datum		d = field(row, name, TEXTOID, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* The same for a column that must not be NULL */
static Datum
field_not_null(HeapTupleHeader row, const char *name, Oid type)
{
	bool		isnull;
	Datum		d = field(row, name, type, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("column \"%s\" of the row is NULL", name)));
	return d;
}

/* The ledger row's columns the rules use */
static void
ledger_row_fields(LedgerRow *c, HeapTupleHeader h)
{
	c->cancellation_id = DatumGetInt64(field_not_null(h, "cancellation_id", INT8OID));
	c->sent_field = field_text(h, "sent_field");
	c->sent_id = field_text(h, "sent_id");
	c->payment_request_id = field_text(h, "payment_request_id");
	c->payment_id = field_text(h, "payment_id");
	c->state = field_text(h, "state");
	c->attempt_count = DatumGetInt32(field_not_null(h, "attempt_count", INT4OID));
	c->retry_budget_start = DatumGetInt32(field_not_null(h, "retry_budget_start", INT4OID));
	if (c->sent_field == NULL || c->sent_id == NULL || c->state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the ledger row lacks its sent id or state")));
}

/*
 * A ledger row from the composite Datum in column 1 of the last
 * statement's row 0, copied into the caller's memory (outside SPI's).
 */
static void
ledger_row_from_result(LedgerRow *c, MemoryContext mcxt)
{
	bool		isnull;
	Datum		d = col_datum(0, 1, &isnull);
	MemoryContext old;
	HeapTupleHeader h;

	old = MemoryContextSwitchTo(mcxt);
	c->row = datumCopy(d, false, -1);
	h = DatumGetHeapTupleHeader(c->row);
	ledger_row_fields(c, h);
	MemoryContextSwitchTo(old);
}

/* The bound order's cancelling and cancelled values; false if none is bound */
static bool
binding(char **cancelling, char **cancelled, MemoryContext mcxt)
{
	MemoryContext old;

	if (run(Q_BINDING, NULL, NULL) == 0)
		return false;
	old = MemoryContextSwitchTo(mcxt);
	*cancelling = col_text(0, 1);
	*cancelled = col_text(0, 2);
	MemoryContextSwitchTo(old);
	return true;
}

static void
set_order_status(const char *field, const char *id, const char *status,
				 const char *ledger_field, const char *ledger_id)
{
	Datum		v[5];
	char		n[5];

	v[0] = text_or_null(field, n, 0);
	v[1] = text_or_null(id, n, 1);
	v[2] = text_or_null(status, n, 2);
	v[3] = text_or_null(ledger_field, n, 3);
	v[4] = text_or_null(ledger_id, n, 4);
	run(Q_SET_ORDER, v, n);
}

/*
 * NOTIFY alipayplus_cancellations, sent for each ledger row created, is
 * queued only when the transaction commits (an XACT_EVENT_PRE_COMMIT
 * callback, which runs before PostgreSQL moves the queued notifications
 * out): a transaction that did NOTIFY cannot be prepared, and PREPARE
 * TRANSACTION after alipayplus_cancel_payment() or
 * alipayplus_request_cancel() must work, or the call's verified answer
 * would be lost with the transaction.  A prepared transaction sends no
 * notification (COMMIT PREPARED cannot send one); the processor finds the
 * row anyway.  The ids live in TopTransactionContext, each with the
 * subtransaction level that created its row, so that the ids of a
 * rolled-back subtransaction are forgotten.
 */
typedef struct PendingNotify
{
	int64		cancellation_id;
	int			level;
} PendingNotify;

static List *pending_notifies = NIL;
static bool notify_callbacks = false;

static void
notify_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (event == XACT_EVENT_PRE_COMMIT)
	{
		foreach(lc, pending_notifies)
		{
			PendingNotify *p = (PendingNotify *) lfirst(lc);

			Async_Notify("alipayplus_cancellations",
						 psprintf(INT64_FORMAT, p->cancellation_id));
		}
	}
	/* every other event ends the transaction or prepares it: nothing to send */
	if (event != XACT_EVENT_PARALLEL_PRE_COMMIT)
		pending_notifies = NIL;
}

static void
notify_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	foreach(lc, pending_notifies)
	{
		PendingNotify *p = (PendingNotify *) lfirst(lc);

		if (p->level < level)
			continue;
		if (event == SUBXACT_EVENT_ABORT_SUB)
			pending_notifies = foreach_delete_current(pending_notifies, lc);
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
			p->level = level - 1;
	}
}

static void
notify_at_commit(int64 cancellation_id)
{
	MemoryContext old;
	PendingNotify *p;

	if (!notify_callbacks)
	{
		RegisterXactCallback(notify_xact_callback, NULL);
		RegisterSubXactCallback(notify_subxact_callback, NULL);
		notify_callbacks = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	p = palloc(sizeof(PendingNotify));
	p->cancellation_id = cancellation_id;
	p->level = GetCurrentTransactionNestLevel();
	pending_notifies = lappend(pending_notifies, p);
	MemoryContextSwitchTo(old);
}

/*
 * The row Q_FIND found, in *c; refused if it knows another payment id than
 * payment_id (the row found by its request id): the two ids name two
 * payments, and the ledger will not merge them.
 */
static void
found_row(LedgerRow *c, const char *payment_id, MemoryContext mcxt)
{
	bool		isnull;

	ledger_row_from_result(c, mcxt);
	if (DatumGetBool(col_datum(0, 2, &isnull)) && !isnull)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("ledger row %lld for payment request %s knows payment id %s, not %s",
						(long long) c->cancellation_id, c->payment_request_id,
						c->payment_id, payment_id),
				 errdetail("A payment's two ids must agree; the ledger will not merge two payments, nor guess which id is right. Nothing was changed."),
				 errhint("If one of them is a placeholder (such as 'N/A' or '0') or wrong, correct the order row or ask a person to check alipayplus.cancellations; see \"The two ids of a payment\" in the README.")));
}

/*
 * Create the ledger row (values v of Q_INSERT) and notify the processors,
 * or, if it exists (another transaction created it and has committed),
 * find and lock it.
 */
static void
create_or_find(Datum *v, char *n, LedgerRow *c, MemoryContext mcxt)
{
	if (run(Q_INSERT, v, n) == 1)
	{
		ledger_row_from_result(c, mcxt);
		notify_at_commit(c->cancellation_id);
		return;
	}
	if (run(Q_FIND, v, n) == 0)
		elog(ERROR, "the ledger row for %s %s vanished",
			 TextDatumGetCString(v[0]), TextDatumGetCString(v[1]));
	found_row(c, n[3] == 'n' ? NULL : TextDatumGetCString(v[3]), mcxt);
}

/*
 * Take one of the extension's transaction-level locks: an advisory lock
 * tag [database, "APSC", key, kind], whose kind (3 or 4) SQL's advisory-lock
 * functions never build.  Transaction-level (sessionLock false): owned by
 * the current resource owner, released at the end of the transaction, or
 * at the abort of the subtransaction that took it, like
 * pg_advisory_xact_lock.
 */
static void
lock_aps(uint32 key, uint16 kind, bool exclusive)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) APS_ID_LOCK_SPACE,
						 key, kind);
	(void) LockAcquire(&tag, exclusive ? ExclusiveLock : ShareLock,
					   false, false);
}

/* The id lock bucket of an id (see lock_ids()) */
static int32
id_bucket(const char *id)
{
	return hash_bytes((const unsigned char *) id, strlen(id)) %
		APS_ID_LOCK_BUCKETS;
}

/*
 * Serialise on ids a and b (either may be NULL) with a transaction-level
 * advisory lock on the bucket of each (a hash of the id modulo
 * APS_ID_LOCK_BUCKETS), taken in bucket order.  Every path that gives an id
 * a cancellation (mark_cancelling) takes them shared, and
 * alipayplus_note_refund exclusive, before looking at the other kind: so a
 * refund and a cancel request for one id never run at once, and whichever
 * comes second waits until the first ends and then sees what it did, while
 * cancel requests never wait for each other.  Buckets rather than one lock
 * per id keep a transaction that queues thousands of ids
 * (alipayplus_request_cancel_all) within the shared lock table; the price
 * is that a refund may wait for a cancel request of another id in its
 * bucket.
 */
static void
lock_ids(const char *a, const char *b, bool exclusive)
{
	int32		keys[2];
	int			n = 0;
	int			i;

	if (a != NULL)
		keys[n++] = id_bucket(a);
	if (b != NULL)
	{
		int32		k = id_bucket(b);

		if (n == 0 || k != keys[0])
			keys[n++] = k;
	}
	if (n == 2 && keys[1] < keys[0])
	{
		int32		t = keys[0];

		keys[0] = keys[1];
		keys[1] = t;
	}
	for (i = 0; i < n; i++)
		lock_aps((uint32) keys[i], APS_ID_LOCK_KIND, exclusive);
}

/*
 * Take the binding lock for the rest of the transaction: shared by every
 * path that may move a bound order to the cancelling value
 * (mark_cancelling), before it reads the binding; exclusive by
 * alipayplus_bind_orders before it looks for orders a new binding would
 * strand.  So a new binding waits for the requests in flight to commit,
 * and then counts the orders they marked; a request waits for a new
 * binding to commit, and then marks an order of the table now bound.
 * Requests share the lock and never wait for each other; a heavyweight
 * lock in the shared lock table rather than a row lock on
 * alipayplus.order_binding, which would dirty that row (and create
 * MultiXacts) on every request.  A request reads the binding on the
 * latest committed data (also under REPEATABLE READ); a new binding
 * counts orders on fresh snapshots, so it refuses to replace a binding
 * under REPEATABLE READ and SERIALIZABLE, where its snapshot could miss
 * them (alipayplus._refuse_stranding_rebind).
 */
static void
lock_binding(bool exclusive)
{
	lock_aps(APS_BINDING_LOCK_KEY, APS_BINDING_LOCK_FIELD4, exclusive);
}

/*
 * alipayplus._lock_binding(): the binding lock, exclusive, for
 * alipayplus_bind_orders (see lock_binding())
 */
Datum
alipayplus_lock_binding(PG_FUNCTION_ARGS)
{
	lock_binding(true);
	PG_RETURN_VOID();
}

/*
 * Run statement q (a look-up) on the latest committed data rather than the
 * transaction's snapshot: under REPEATABLE READ, what a transaction that
 * held the same id lock committed must be seen too.  Returns the number of
 * rows.
 */
static uint64
run_latest(int q, Datum *values, const char *nulls)
{
	int			rc = SPI_execute_snapshot(plans[q], values, nulls,
										  GetLatestSnapshot(), InvalidSnapshot,
										  false, false, 0);

	if (rc < 0)
		elog(ERROR, "ledger statement %d failed: %s", q,
			 SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * Mark a payment CANCELLING in the ledger (and its bound order), creating
 * the ledger row if needed; *c is the row, locked.  The row is keyed by
 * the one id it sends: the request id when known (given, or read from the
 * bound order), else the payment id.  Refuses refunds and payments past
 * their cancel deadline before changing anything, and with only_pending an
 * order that is not (or no longer) in one of the binding's pending values,
 * checked under the order row lock.  An order at the paid value is marked
 * all the same (an explicit request), but the row keeps that it was paid
 * (late_payment_*, shown in alipayplus.attention).  SPI must be
 * connected; *c is allocated in mcxt.
 */
static void
mark_cancelling(const char *payment_id, const char *request_id,
				bool has_initiated, TimestampTz initiated, bool only_pending,
				LedgerRow *c, MemoryContext mcxt)
{
	const char *lock_field = request_id ? "paymentRequestId" : "paymentId";
	const char *lock_id = request_id ? request_id : payment_id;
	char	   *cancelling = NULL;
	char	   *cancelled = NULL;
	bool		bound;
	bool		refund;
	bool		order_found = false;
	char	   *order_status = NULL;
	bool		order_paid = false;
	const char *field;
	const char *id;
	Datum		v[6];
	char		n[6];

	aps_check_id_pair(payment_id, request_id);
	prepare_plans();

	/* before the binding is read: a new binding must count what we mark */
	lock_binding(false);
	v[0] = text_or_null(payment_id, n, 0);
	v[1] = text_or_null(request_id, n, 1);
	run_latest(Q_PRELUDE, v, n);
	{
		MemoryContext old = MemoryContextSwitchTo(mcxt);

		bound = strcmp(col_text(0, 1), "t") == 0;
		cancelling = col_text(0, 2);
		cancelled = col_text(0, 3);
		refund = strcmp(col_text(0, 4), "t") == 0;
		MemoryContextSwitchTo(old);
	}
	c->binding_known = true;
	c->bound = bound;
	c->cancelling_value = cancelling;
	c->cancelled_value = cancelled;
	if (bound)
	{
		v[0] = text_or_null(lock_field, n, 0);
		v[1] = text_or_null(lock_id, n, 1);
		run(Q_LOCK_ORDER, v, n);
		if (SPI_processed == 1 && strcmp(col_text(0, 1), "t") == 0)
		{
			MemoryContext old = MemoryContextSwitchTo(mcxt);
			bool		isnull;
			Datum		d;

			order_found = true;
			if (request_id == NULL)
				request_id = col_text(0, 2);
			if (payment_id == NULL)
				payment_id = col_text(0, 3);
			d = col_datum(0, 4, &isnull);
			if (!has_initiated && !isnull)
			{
				has_initiated = true;
				initiated = DatumGetTimestampTz(d);
			}
			order_status = col_text(0, 5);
			MemoryContextSwitchTo(old);
		}
	}

	/*
	 * The order's status as it is now, under its row lock: a status that
	 * changed since the caller picked the order (shipped, or paid by a
	 * notification) is seen here and cannot change before we commit.
	 */
	if (order_found)
	{
		bool		has_pending;

		v[0] = text_or_null(order_status, n, 0);
		if (run(Q_ORDER_KIND, v, n) != 1)
			elog(ERROR, "the order binding vanished");
		has_pending = strcmp(col_text(0, 1), "t") == 0;
		order_paid = strcmp(col_text(0, 3), "t") == 0;
		if (only_pending && !has_pending)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("only_pending needs the pending status values in the binding"),
					 errhint("Bind the table again with alipayplus_bind_orders(..., pending_values => ARRAY['PENDING']).")));
		if (only_pending && strcmp(col_text(0, 2), "t") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_APS_NOT_PENDING),
					 errmsg("order %s is no longer pending: its status is %s",
							lock_id, order_status ? order_status : "NULL"),
					 errdetail("Only orders in one of the binding's pending_values are cancelled when only_pending is true."),
					 errhint("Nothing was changed; the order keeps its status.")));
	}
	else if (only_pending)
		ereport(ERROR,
				(errcode(ERRCODE_APS_NOT_PENDING),
				 errmsg("%s has no bound order, so it is not pending", lock_id),
				 errdetail("Only orders in one of the binding's pending_values are cancelled when only_pending is true."),
				 errhint("Nothing was changed.")));

	/*
	 * Again once the ids are locked (after the order row, which comes
	 * first in every path): a refund noted while we waited for the order
	 * row or the id lock, or the other id the order named, may be a
	 * refund; on the latest data, which a REPEATABLE READ snapshot taken
	 * earlier would not show.
	 */
	lock_ids(payment_id, request_id, false);
	if (!refund)
	{
		v[0] = text_or_null(payment_id, n, 0);
		v[1] = text_or_null(request_id, n, 1);
		refund = run_latest(Q_REFUND, v, n) > 0;
	}
	if (refund)
		ereport(ERROR,
				(errcode(ERRCODE_APS_IS_A_REFUND),
				 errmsg("%s is a refund, not a payment",
						request_id ? request_id : payment_id),
				 errdetail("It is listed in alipayplus.known_refunds."),
				 errhint("cancelPayment works on payments only; a refund cannot be cancelled.")));

	field = request_id ? "paymentRequestId" : "paymentId";
	id = request_id ? request_id : payment_id;
	v[0] = text_or_null(field, n, 0);
	v[1] = text_or_null(id, n, 1);
	v[2] = text_or_null(request_id, n, 2);
	v[3] = text_or_null(payment_id, n, 3);
	if (run(Q_FIND, v, n) == 0)
	{
		bool		isnull = true;
		Datum		deadline = (Datum) 0;

		/*
		 * Only a payment id, which a row of some request id also holds:
		 * the same payment, or another one with the same placeholder
		 */
		if (request_id == NULL)
		{
			Datum		w[1];

			w[0] = CStringGetTextDatum(payment_id);
			if (run(Q_OTHER_HOLDER, w, " ") == 1)
				ereport(ERROR,
						(errcode(ERRCODE_CARDINALITY_VIOLATION),
						 errmsg("payment id %s is also held by ledger row %s for payment request %s",
								payment_id, col_text(0, 1), col_text(0, 2)),
						 errdetail("A payment id alone cannot tell whether it is that payment or another one with the same id (an order often holds a placeholder until Alipay+ answers). Nothing was changed."),
						 errhint("Cancel by the payment's payment_request_id instead.")));
		}

		/* a new row only while Alipay+ still accepts cancelPayment */
		if (has_initiated)
		{
			Datum		w[1];
			bool		open_null;

			w[0] = TimestampTzGetDatum(initiated);
			run(Q_WINDOW, w, " ");
			deadline = col_datum(0, 2, &isnull);
			if (!DatumGetBool(col_datum(0, 1, &open_null)) && !open_null)
				ereport(ERROR,
						(errcode(ERRCODE_APS_WINDOW_CLOSED),
						 errmsg("payment %s can no longer be cancelled: its cancel window closed at %s",
								id, col_text(0, 2)),
						 errdetail("The payment was initiated at %s; Alipay+ accepts cancelPayment until 00:15 UTC+8 on the next day.",
								   DatumGetCString(DirectFunctionCall1(timestamptz_out,
																	   TimestampTzGetDatum(initiated)))),
						 errhint("Refund the payment instead.")));
		}
		v[4] = TimestampTzGetDatum(initiated);
		n[4] = has_initiated ? ' ' : 'n';
		v[5] = deadline;
		n[5] = isnull ? 'n' : ' ';
		create_or_find(v, n, c, mcxt);
	}
	else
		found_row(c, payment_id, mcxt);
	if ((c->payment_request_id == NULL && request_id != NULL) ||
		(c->payment_id == NULL && payment_id != NULL))
	{
		Datum		w[3];
		char		wn[3] = "   ";

		/*
		 * A row keyed by payment id learns its request id only from the
		 * one order that holds that payment id: with several, the first
		 * to ask would take the cancellation over for good
		 */
		if (c->payment_request_id == NULL && request_id != NULL && bound)
		{
			char	   *holders;

			w[0] = CStringGetTextDatum(c->payment_id);
			holders = run(Q_ORDERS_WITH_PAYMENT_ID, w, " ") == 1 ?
				col_text(0, 1) : "0";
			if (strcmp(holders, "1") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_CARDINALITY_VIOLATION),
						 errmsg("ledger row %lld cancels payment id %s, which %s orders hold; it cannot tell whether it is the cancellation of payment request %s",
								(long long) c->cancellation_id, c->payment_id,
								holders, request_id),
						 errdetail("A cancellation requested by payment id belongs to the one order that holds that payment id. Nothing was changed."),
						 errhint("Correct the payment ids of the bound orders so that one order holds %s, then request again.",
								 c->payment_id)));
		}

		w[0] = Int64GetDatum(c->cancellation_id);
		w[1] = text_or_null(request_id, wn, 1);
		w[2] = text_or_null(payment_id, wn, 2);
		if (run(Q_COMPLETE_IDS, w, wn) != 1)
			elog(ERROR, "ledger row %lld was not updated with its ids",
				 (long long) c->cancellation_id);
		ledger_row_from_result(c, mcxt);
	}

	if (order_paid && strcmp(c->state, "CANCELLED") != 0)
	{
		Datum		w[1];

		/* the paid value is about to be overwritten: keep that it was paid */
		w[0] = Int64GetDatum(c->cancellation_id);
		if (run(Q_NOTE_PAID, w, " ") == 1)
			ledger_row_from_result(c, mcxt);
	}

	if (order_found)
	{
		if (strcmp(c->state, "CANCELLED") == 0)
			set_order_status(lock_field, lock_id, cancelled,
							 c->sent_field, c->sent_id);
		else if ((order_status == NULL) != (cancelled == NULL) ||
				 (order_status != NULL && strcmp(order_status, cancelled) != 0))
			set_order_status(lock_field, lock_id, cancelling,
							 c->sent_field, c->sent_id);
	}
}

/*
 * Record one attempt (what the call returned, in the columns of
 * alipayplus._call_cancel) and return it; *attempt_id is its id.  With
 * pending (not 0), the attempt put on record before the request left is
 * completed instead, once: returns (Datum) 0 if it is not waiting for an
 * answer any more.
 */
static Datum
record_attempt(const LedgerRow *c, const ApsCallResult *r, const char *caller,
			   int64 pending, TimestampTz answered_at,
			   int64 *attempt_id, char **result_code, MemoryContext mcxt)
{
	Datum		v[16];
	char		n[16];
	int			i;
	bool		isnull;
	MemoryContext old;
	Datum		a;
	HeapTupleHeader h;

	v[0] = Int64GetDatum(c->cancellation_id);
	n[0] = ' ';
	for (i = 0; i < APS_CALL_NUM_COLS; i++)
	{
		v[i + 1] = r->values[i];
		n[i + 1] = r->nulls[i] ? 'n' : ' ';
	}
	v[13] = CStringGetTextDatum(caller);
	n[13] = ' ';
	if (pending != 0)
	{
		v[14] = Int64GetDatum(pending);
		n[14] = ' ';
		v[15] = TimestampTzGetDatum(answered_at);
		n[15] = ' ';
		if (run(Q_COMPLETE, v, n) != 1)
			return (Datum) 0;
	}
	else if (run(Q_RECORD, v, n) != 1)
		elog(ERROR, "an attempt was not recorded");
	old = MemoryContextSwitchTo(mcxt);
	a = datumCopy(col_datum(0, 1, &isnull), false, -1);
	h = DatumGetHeapTupleHeader(a);
	*attempt_id = DatumGetInt64(field_not_null(h, "attempt_id", INT8OID));
	*result_code = field_text(h, "result_code");
	MemoryContextSwitchTo(old);
	return a;
}

/*
 * Apply a recorded attempt to the ledger row and the bound order: S makes
 * both CANCELLED (cancelled_at: answered_at); otherwise the result policy
 * decides between a retry after backoff and a flag for a person.  Sets
 * out->state and out->attention.
 */
static void
apply_result(const LedgerRow *c, int64 attempt_id, const char *status,
			 const char *code, TimestampTz answered_at, Settled *out,
			 MemoryContext mcxt)
{
	Datum		v[6];
	char		n[6] = "      ";
	MemoryContext old;

	v[0] = Int64GetDatum(c->cancellation_id);
	v[1] = Int64GetDatum(attempt_id);
	if (strcmp(status, "S") == 0)
	{
		char	   *cancelling = c->cancelling_value;
		char	   *cancelled = c->cancelled_value;
		bool		bound = c->bound;

		v[2] = TimestampTzGetDatum(answered_at);
		if (run(Q_APPLY_S, v, n) != 1)
			ereport(ERROR,
					(errcode(ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION),
					 errmsg("the update of ledger row %lld changed nothing",
							(long long) c->cancellation_id),
					 errdetail("A trigger or rule on alipayplus.cancellations skipped it.")));
		old = MemoryContextSwitchTo(mcxt);
		out->state = col_text(0, 1);
		out->attention = strcmp(col_text(0, 2), "t") == 0;
		MemoryContextSwitchTo(old);
		if (!c->binding_known)
			bound = binding(&cancelling, &cancelled, mcxt);
		/*
		 * The order by its request id when the row knows it: the order may
		 * not have stored the payment id the row sends yet
		 */
		if (bound && c->payment_request_id != NULL)
			set_order_status("paymentRequestId", c->payment_request_id,
							 cancelled, c->sent_field, c->sent_id);
		else if (bound)
			set_order_status(c->sent_field, c->sent_id, cancelled, NULL, NULL);
	}
	else
	{
		Datum		p[1];
		char	   *action = NULL;
		char	   *note = NULL;
		int32		attempt_no;

		p[0] = CStringGetTextDatum(code ? code : "");
		if (code != NULL && run(Q_POLICY, p, " ") == 1)
		{
			old = MemoryContextSwitchTo(mcxt);
			action = col_text(0, 1);
			note = col_text(0, 2);
			MemoryContextSwitchTo(old);
		}
		if (action == NULL || strcmp(action, "done") == 0)
			action = strcmp(status, "U") == 0 ? "retry" : "attention";
		attempt_no = c->attempt_count + 1 - c->retry_budget_start;

		v[2] = CStringGetTextDatum(action);
		v[3] = text_or_null(note, n, 3);
		v[4] = Int32GetDatum(attempt_no);
		v[5] = Int32GetDatum(aps_max_attempts);
		if (run(Q_APPLY_OTHER, v, n) != 1)
			ereport(ERROR,
					(errcode(ERRCODE_TRIGGERED_DATA_CHANGE_VIOLATION),
					 errmsg("the update of ledger row %lld changed nothing",
							(long long) c->cancellation_id),
					 errdetail("A trigger or rule on alipayplus.cancellations skipped it.")));
		old = MemoryContextSwitchTo(mcxt);
		out->state = col_text(0, 1);
		out->attention = strcmp(col_text(0, 2), "t") == 0;
		MemoryContextSwitchTo(old);
	}
}

/*
 * Record an answer and apply it, in a subtransaction: if applying fails
 * (the order's trigger or CHECK refused, a query cancel or statement
 * timeout arrived), the answer is recorded anyway, the row flagged with
 * the error, and a WARNING says so.  Only a failure to record the attempt
 * itself (a DBA's trigger on cancel_attempts refusing it) ends the
 * statement with the error, like any error in the caller's transaction.
 * The call itself was made before, not in the subtransaction, so that an
 * interrupt during it ends the statement.
 *
 * pending, when not 0, is the attempt the pipeline put on record before
 * the request left: it is completed (once) instead of a new one being
 * added.  A row already CANCELLED (another path cancelled it while this
 * call was in flight) keeps its state: the answer is only recorded.  With
 * interrupted (the pipeline's run was interrupted and is winding up), an
 * S is not applied to the bound order, whose owner's triggers may be what
 * is slow: the ledger row becomes CANCELLED and is flagged instead, so
 * that the run ends within the ledger's own time.
 * SPI must be connected; *out is allocated in mcxt.
 */
static void
settle(const LedgerRow *c, const ApsCallResult *r, const char *caller,
	   int64 pending, TimestampTz answered_at, bool interrupted,
	   Settled *out, MemoryContext mcxt)
{
	ResourceOwner owner = CurrentResourceOwner;
	const char *status = TextDatumGetCString(r->values[APS_CALL_RESULT_STATUS]);
	int64		attempt_id;
	char	   *code;

	out->recorded = true;
	out->attention = false;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(mcxt);
	PG_TRY();
	{
		out->attempt = record_attempt(c, r, caller, pending, answered_at,
									  &attempt_id, &code, mcxt);
		if (out->attempt == (Datum) 0)
		{
			out->recorded = false;
			out->state = MemoryContextStrdup(mcxt, c->state);
		}
		else if (pending != 0 && strcmp(c->state, "CANCELLED") == 0)
			out->state = MemoryContextStrdup(mcxt, c->state);
		else
		{
			if (interrupted && strcmp(status, "S") == 0)
				ereport(ERROR,
						(errcode(ERRCODE_QUERY_CANCELED),
						 errmsg("the run was interrupted before this answer could be applied to the bound order")));
			apply_result(c, attempt_id, status, code, answered_at, out, mcxt);
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(mcxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		char	   *why;
		Datum		v[4];
		char		n[4] = "    ";
		bool		cut;

		MemoryContextSwitchTo(mcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(mcxt);
		CurrentResourceOwner = owner;

		/*
		 * a cancel while applying: the answer is kept and the run told to
		 * stop, with the cancel's own message
		 */
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && !interrupted)
		{
			Datum		m[1];

			m[0] = CStringGetTextDatum(edata->message);
			run(Q_INTERRUPTED, m, " ");
		}
		out->attempt = record_attempt(c, r, caller, pending, answered_at,
									  &attempt_id, &code, mcxt);
		if (out->attempt == (Datum) 0)
		{
			out->recorded = false;
			out->state = MemoryContextStrdup(mcxt, c->state);
			FreeErrorData(edata);
			return;
		}
		why = psprintf("%s (SQLSTATE %s)", edata->message,
					   unpack_sql_state(edata->sqlerrcode));

		/*
		 * A verified S whose order update the caller's query cancel or
		 * statement_timeout cut (or the run's own stop after one), not the
		 * order's own fault: no person is asked, the next run updates the
		 * order (Q_FOLLOW_LATER).  Any other answer is flagged as always.
		 */
		cut = edata->sqlerrcode == ERRCODE_QUERY_CANCELED &&
			strcmp(status, "S") == 0;
		v[0] = Int64GetDatum(c->cancellation_id);
		v[1] = Int64GetDatum(attempt_id);
		v[2] = CStringGetTextDatum(why);
		v[3] = TimestampTzGetDatum(answered_at);
		if (run(Q_NOT_APPLIED, v, n) != 1)
		{
			/*
			 * Something (a DBA's trigger on the ledger) skipped even this
			 * update: the attempt stays recorded, the row as it was.
			 */
			out->state = MemoryContextStrdup(mcxt, c->state);
			ereport(WARNING,
					(errmsg("Alipay+ answered %s, but neither the result nor the failure to apply it could be written to ledger row %lld: %s",
							status, (long long) c->cancellation_id, why),
					 errdetail("The answer is kept as attempt %lld.",
							   (long long) attempt_id)));
		}
		else
		{
			char	   *reason = MemoryContextStrdup(mcxt, col_text(0, 3));

			out->state = MemoryContextStrdup(mcxt, col_text(0, 1));
			if (cut && run(Q_FOLLOW_LATER, v, " ") == 1)
			{
				/* the caller's interrupt said why already: NOTICE then */
				ereport(interrupted ? NOTICE : WARNING,
						(errmsg("Alipay+ cancelled the payment (verified S, attempt %lld), but the update of the bound order was cut: %s",
								(long long) attempt_id, why),
						 errdetail("Ledger row %lld is CANCELLED; the next processor run updates the order.",
								   (long long) c->cancellation_id)));
			}
			else
			{
				out->attention = true;
				ereport(WARNING, (errmsg("%s", reason)));
			}
		}
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * The pipeline's settle step (processor.c): lock ledger row
 * cancellation_id, complete its claimed attempt attempt_id with r (the
 * answer, or U with the reason there is none) and apply it under the
 * rules above.  SPI must be connected.  Returns the row's state, or NULL
 * when the attempt was not waiting for an answer any more (then nothing
 * was written); *attention says whether the row is flagged.
 */
char *
aps_settle_claimed(int64 cancellation_id, int64 attempt_id,
				   const ApsCallResult *r, TimestampTz answered_at,
				   const char *caller, bool interrupted, bool *attention)
{
	MemoryContext outer = CurrentMemoryContext;
	LedgerRow	c;
	Settled		s;
	Datum		v[1];

	prepare_plans();
	v[0] = Int64GetDatum(cancellation_id);
	if (run(Q_LOCK_ROW, v, " ") != 1)
		return NULL;
	memset(&c, 0, sizeof(c));
	ledger_row_from_result(&c, outer);
	c.binding_known = false;
	settle(&c, r, caller, attempt_id, answered_at, interrupted, &s, outer);
	*attention = s.attention;
	if (!s.recorded && !r->nulls[APS_CALL_RESULT_STATUS])
	{
		const char *status = TextDatumGetCString(r->values[APS_CALL_RESULT_STATUS]);

		/*
		 * Alipay+'s own answer for an attempt completed meanwhile (as
		 * crashed, by a processor that took its run for ended): never in
		 * silence.  The row is retried, and Alipay+ answers it again.
		 */
		if (strcmp(status, "U") != 0)
			ereport(WARNING,
					(errmsg("Alipay+ answered %s %s for attempt %lld of ledger row %lld, which was completed meanwhile: the answer is not applied",
							status,
							r->nulls[APS_CALL_RESULT_CODE] ? "" :
							TextDatumGetCString(r->values[APS_CALL_RESULT_CODE]),
							(long long) attempt_id, (long long) cancellation_id),
					 errdetail("The attempt was completed by another processor, which took this run for ended; the cancellation is retried with the same parameters.")));
	}
	return s.recorded ? s.state : NULL;
}

static char *
arg_text(FunctionCallInfo fcinfo, int i)
{
	return PG_ARGISNULL(i) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(i));
}

/*
 * alipayplus._mark_cancelling(payment_id, payment_request_id, initiated_at
 * [, only_pending]) RETURNS alipayplus.cancellations: see mark_cancelling().
 */
Datum
alipayplus_mark_cancelling(PG_FUNCTION_ARGS)
{
	MemoryContext outer = CurrentMemoryContext;
	LedgerRow	c;

	aps_refuse_read_only();
	/* a queued request lost with its commit would never be sent */
	aps_warn_durability();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	mark_cancelling(arg_text(fcinfo, 0), arg_text(fcinfo, 1),
					!PG_ARGISNULL(2),
					PG_ARGISNULL(2) ? 0 : PG_GETARG_TIMESTAMPTZ(2),
					PG_NARGS() > 3 && !PG_ARGISNULL(3) && PG_GETARG_BOOL(3),
					&c, outer);
	SPI_finish();
	PG_RETURN_DATUM(c.row);
}

/*
 * alipayplus._settle(c alipayplus.cancellations, r record, caller text)
 * RETURNS alipayplus.cancel_attempts: record and apply r, a row with the
 * columns of alipayplus._call_cancel (more columns are ignored), for the
 * locked ledger row c.
 */
Datum
alipayplus_settle(PG_FUNCTION_ARGS)
{
	HeapTupleHeader ch;
	HeapTupleHeader rh;
	char	   *caller;
	LedgerRow	c;
	ApsCallResult r;
	Settled		s;
	int			i;
	MemoryContext outer = CurrentMemoryContext;

	/* declared STRICT; checked again for a definition that is not */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	ch = PG_GETARG_HEAPTUPLEHEADER(0);
	rh = PG_GETARG_HEAPTUPLEHEADER(1);
	caller = text_to_cstring(PG_GETARG_TEXT_PP(2));
	memset(&c, 0, sizeof(c));
	c.row = PointerGetDatum(ch);
	ledger_row_fields(&c, ch);
	c.binding_known = false;
	for (i = 0; i < APS_CALL_NUM_COLS; i++)
		r.values[i] = field(rh, aps_call_columns[i].name,
							aps_call_columns[i].type, &r.nulls[i]);
	if (r.nulls[APS_CALL_RESULT_STATUS])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the result to settle has no result_status")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	prepare_plans();
	settle(&c, &r, caller, 0, GetCurrentTimestamp(), false, &s, outer);
	SPI_finish();
	PG_RETURN_DATUM(s.attempt);
}

/*
 * alipayplus_cancel_payment(payment_id, payment_request_id): mark the
 * payment CANCELLING, call cancelPayment now and apply the result, all in
 * the caller's transaction.  One row: the attempt's result (or, for a
 * payment already cancelled, its own verified S, with no call), the
 * attempt and ledger row ids, and the row's state.
 */
Datum
alipayplus_cancel_payment(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *payment_id = arg_text(fcinfo, 0);
	char	   *request_id = arg_text(fcinfo, 1);
	EVP_PKEY   *key;
	LedgerRow	c;
	Datum		values[8];
	bool		nulls[8];
	int			i;
	MemoryContext outer;

	InitMaterializedSRF(fcinfo, 0);
	memset(nulls, 0, sizeof(nulls));
	outer = CurrentMemoryContext;

	/*
	 * a read-only transaction, then configuration problems, are reported
	 * before anything is marked
	 */
	key = aps_check_config();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	mark_cancelling(payment_id, request_id, false, 0, false, &c, outer);

	if (strcmp(c.state, "CANCELLED") == 0)
	{
		Datum		v[1];

		/* already cancelled: report its own verified success, call nothing */
		v[0] = Int64GetDatum(c.cancellation_id);
		values[0] = CStringGetTextDatum("S");
		if (run(Q_STORED_S, v, " ") == 1)
		{
			for (i = 1; i <= 5; i++)
			{
				values[i] = col_datum(0, i, &nulls[i]);
				if (!nulls[i])
					values[i] = SPI_datumTransfer(values[i], i == 5, i == 5 ? 8 : -1);
			}
		}
		else
			for (i = 1; i <= 5; i++)
				nulls[i] = true;
	}
	else
	{
		ApsCallResult r;
		Settled		s;
		HeapTupleHeader h;

		/*
		 * The key again: marking ran the order owner's code, which may
		 * have reloaded the key cache and freed the one checked above.
		 */
		key = aps_private_key();
		aps_call_one(c.sent_field, c.sent_id, key, &r);
		settle(&c, &r, "alipayplus_cancel_payment", 0, GetCurrentTimestamp(),
			   false, &s, outer);
		c.state = s.state;
		h = DatumGetHeapTupleHeader(s.attempt);
		values[0] = field(h, "result_status", TEXTOID, &nulls[0]);
		values[1] = field(h, "result_code", TEXTOID, &nulls[1]);
		values[2] = field(h, "result_message", TEXTOID, &nulls[2]);
		values[3] = field(h, "acquirer_id", TEXTOID, &nulls[3]);
		values[4] = field(h, "psp_id", TEXTOID, &nulls[4]);
		values[5] = field(h, "attempt_id", INT8OID, &nulls[5]);
	}
	values[6] = Int64GetDatum(c.cancellation_id);
	values[7] = CStringGetTextDatum(c.state);

	/* copied into the result before SPI's memory, which some values use, goes */
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	SPI_finish();
	return (Datum) 0;
}

/*
 * CALL alipayplus_require_top_level(procedure): for the procedures that
 * commit as they go (alipayplus_run_cancellations,
 * alipayplus_process_backlog), called first, before anything is claimed or
 * sent.  Raises 25001 unless the caller may commit: a CALL as a statement
 * of its own, outside a transaction block, from no function, and from no
 * procedure with SET or SECURITY DEFINER.  Otherwise the first COMMIT
 * would fail after a window of calls had been answered, and the answers
 * would be rolled back with it.  PL/pgSQL passes its own atomicity on to
 * the procedures it calls, so the CallContext this procedure gets says
 * whether its caller can commit.
 */
void
aps_require_top_level(FunctionCallInfo fcinfo, const char *name)
{
	if (fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		castNode(CallContext, fcinfo->context)->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("%s must be called as a top-level statement by itself", name),
				 errdetail("It commits as it goes, which it cannot do inside a transaction block, a function, a DO block in a transaction, a procedure with SET or SECURITY DEFINER, or a query string of several statements (such as a pg_cron command \"CALL ...; SELECT 1\"). Nothing was claimed or sent."),
				 errhint("Run CALL %s() as a statement of its own, outside BEGIN ... COMMIT; inside a transaction, use SELECT * FROM alipayplus_process_cancellations().",
						 name)));
}

Datum
alipayplus_require_top_level(PG_FUNCTION_ARGS)
{
	aps_require_top_level(fcinfo, PG_ARGISNULL(0) ? "this procedure" :
						  text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * alipayplus._refund_blocked(refund_request_id, refund_id) RETURNS boolean:
 * for alipayplus_note_refund, which must call it before it notes the ids:
 * takes the id locks exclusive (see lock_ids()) and says whether either id
 * already has a cancellation, on the latest committed data.
 */
Datum
alipayplus_refund_blocked(PG_FUNCTION_ARGS)
{
	char	   *refund_request_id = arg_text(fcinfo, 0);
	char	   *refund_id = arg_text(fcinfo, 1);
	Datum		v[2];
	char		n[2];
	bool		blocked;

	lock_ids(refund_request_id, refund_id, true);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	prepare_plans();
	v[0] = text_or_null(refund_request_id, n, 0);
	v[1] = text_or_null(refund_id, n, 1);
	blocked = run_latest(Q_HAS_CANCELLATION, v, n) > 0;
	SPI_finish();
	PG_RETURN_BOOL(blocked);
}

/*
 * alipayplus._outer_user() RETURNS name: the role the caller acts as (its
 * SET ROLE, else its login role), which a SECURITY DEFINER function's
 * current_user hides.
 */
Datum
alipayplus_outer_user(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(DirectFunctionCall1(namein,
										CStringGetDatum(GetUserNameFromId(GetOuterUserId(),
																		  false))));
}
