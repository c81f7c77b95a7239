/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  The triggers that keep a cancelled payment cancelled, whoever writes
 *	  to the table.
 *
 * alipayplus_guard_cancelled(status_column, cancelled_value,
 *							  cancelling_value [, ...])
 *	  For any table, BEFORE or AFTER UPDATE OR DELETE, FOR EACH ROW.  A row
 *	  whose status is the cancelled value keeps it; a row whose status is a
 *	  cancelling value keeps it or becomes cancelled; neither can be
 *	  deleted.
 *
 * alipayplus_guard_order(status_column, cancelled_value, cancelling_value,
 *						  request_id_column, payment_id_column)
 *	  What alipayplus_bind_orders() attaches to the bound orders table,
 *	  AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW, so that it judges
 *	  the row as finally written, after every BEFORE trigger.  On top of
 *	  the rules above: the id columns of a cancelling or cancelled row do
 *	  not change, and a row reaches the cancelling value only when the
 *	  ledger has a cancellation for its payment, and the cancelled value
 *	  only when that cancellation is CANCELLED (a verified S).
 *	  payment_id_column may be '' when the binding has none.
 *
 * Logical replication: a change that a logical replication apply or
 * table synchronization worker applies itself (not one made by a trigger
 * or other code running inside that worker) brings the publisher's order
 * state, which the publisher's own guard and ledger already checked.  The
 * rules that need this database's ledger (no order born cancelling or
 * cancelled; a cancel state entered only by the ledger's own write) do not
 * apply to it, since the subscriber's ledger does not hold the publisher's
 * cancellations; every other rule does (a cancelled row stays cancelled, a
 * cancelling one only becomes cancelled, neither is deleted, their ids are
 * fixed), so a replicated change can never undo a cancellation.  A row
 * enters a cancel state this way only when nothing on the subscriber could
 * have put that state there (replicated_change()):
 *	- the change is the worker's own: executor nesting 0, counted by the
 *	  hooks below from the start of the process (so only when the library
 *	  is in shared_preload_libraries);
 *	- no other code has run in the worker in this transaction: the worker
 *	  itself never enters the executor or ProcessUtility, so the hooks note
 *	  any query or command a trigger, a foreign key action or a function
 *	  default runs there.  Such code runs as the subscription's owner and
 *	  could write the row, or drop or disable a trigger or default after it
 *	  acted and before this guard looks at the catalog;
 *	- the table has no trigger that fires in the worker (ENABLE ALWAYS or
 *	  REPLICA) other than this extension's: a BEFORE trigger could change
 *	  the row on its way in without entering the executor, and any such
 *	  trigger runs there with the subscription owner's rights;
 *	- the status column has no default that could supply a cancel state
 *	  when the publication leaves it out (only a constant other than the
 *	  cancel values, or none, is accepted).
 * Otherwise the subscription stops with an error saying what to change.
 *
 * Values are compared as the column's type stores them: each trigger
 * argument is read with the type's input function and the column's type
 * modifier (so 'CANCELLED' matches a padded char(12) value) and compared
 * byte for byte, never through operators a table owner could define.
 * Violations raise SQLSTATE ZA001 naming the row by its primary key (or
 * ctid) and both values.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "replication/logicalworker.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_guard_cancelled);
PG_FUNCTION_INFO_V1(alipayplus_guard_order);

/*
 * How deep this process is inside the executor or a utility command (as
 * pg_stat_statements counts it), and whether that count is known: the
 * hooks are installed only when the library is preloaded, so that they
 * count from the start.
 */
static int	exec_nesting = 0;
static bool exec_nesting_known = false;

/*
 * Whether code other than the logical replication worker itself (a
 * trigger's queries, a foreign key action, a function in a default) has
 * entered the executor or ProcessUtility in this process's current
 * transaction: the worker never does either on its own.
 */
static bool worker_ran_code = false;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Every hook: one level deeper, and note code running in the worker */
static void
enter_code(void)
{
	exec_nesting++;
	if (IsLogicalWorker())
		worker_ran_code = true;
}

static void
guard_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT)
		worker_ran_code = false;
}

static void
guard_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction,
				  uint64 count, bool execute_once)
{
	enter_code();
	PG_TRY();
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		exec_nesting--;
	}
	PG_END_TRY();
}

static void
guard_ExecutorFinish(QueryDesc *queryDesc)
{
	enter_code();
	PG_TRY();
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		exec_nesting--;
	}
	PG_END_TRY();
}

static void
guard_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	enter_code();
	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		exec_nesting--;
	}
	PG_END_TRY();
}

/* From _PG_init(): count the executor nesting if loaded at start-up */
void
aps_guard_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_ExecutorRun = ExecutorRun_hook;
	ExecutorRun_hook = guard_ExecutorRun;
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = guard_ExecutorFinish;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = guard_ProcessUtility;
	exec_nesting_known = true;
	RegisterXactCallback(guard_xact_callback, NULL);
}

/* One column the guard looks at, and the type functions it needs */
typedef struct GuardColumn
{
	const char *name;
	int			attnum;
	Form_pg_attribute att;
	Oid			typinput;
	Oid			typioparam;
	Oid			typoutput;
} GuardColumn;

/* "(id)=(42)" from the primary key, or "ctid (0,1)" if there is none */
static char *
describe_row(Relation rel, HeapTuple tuple)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StringInfoData names;
	StringInfoData vals;
	HeapTuple	indtup;
	Form_pg_index index;

	if (!OidIsValid(pkoid) ||
		!HeapTupleIsValid(indtup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid))))
		return psprintf("ctid (%u,%u)",
						ItemPointerGetBlockNumber(&tuple->t_self),
						ItemPointerGetOffsetNumber(&tuple->t_self));

	index = (Form_pg_index) GETSTRUCT(indtup);
	initStringInfo(&names);
	initStringInfo(&vals);
	for (int i = 0; i < index->indnkeyatts; i++)
	{
		AttrNumber	attnum = index->indkey.values[i];
		char	   *val = SPI_getvalue(tuple, tupdesc, attnum);

		if (i > 0)
		{
			appendStringInfoString(&names, ", ");
			appendStringInfoString(&vals, ", ");
		}
		appendStringInfoString(&names,
							   quote_identifier(NameStr(TupleDescAttr(tupdesc, attnum - 1)->attname)));
		appendStringInfoString(&vals, val ? val : "null");
	}
	ReleaseSysCache(indtup);
	return psprintf("(%s)=(%s)", names.data, vals.data);
}

static void
find_column(Relation rel, Trigger *trigger, const char *name, GuardColumn *col)
{
	bool		isvarlena;

	col->name = name;
	col->attnum = SPI_fnumber(RelationGetDescr(rel), name);
	if (col->attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" named by trigger \"%s\" does not exist in table \"%s\"",
						name, trigger->tgname, RelationGetRelationName(rel))));
	col->att = TupleDescAttr(RelationGetDescr(rel), col->attnum - 1);
	getTypeInputInfo(col->att->atttypid, &col->typinput, &col->typioparam);
	getTypeOutputInfo(col->att->atttypid, &col->typoutput, &isvarlena);
}

/* A trigger argument as a value of the column's type */
static Datum
arg_value(GuardColumn *col, const char *s)
{
	return OidInputFunctionCall(col->typinput, (char *) s, col->typioparam,
								col->att->atttypmod);
}

/* Whether two values of the column's type are stored the same */
static bool
same_value(GuardColumn *col, Datum a, bool anull, Datum b, bool bnull)
{
	if (anull || bnull)
		return anull && bnull;
	if (col->att->attlen == -1)
	{
		struct varlena *va = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(a));
		struct varlena *vb = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(b));

		return VARSIZE_ANY_EXHDR(va) == VARSIZE_ANY_EXHDR(vb) &&
			memcmp(VARDATA_ANY(va), VARDATA_ANY(vb), VARSIZE_ANY_EXHDR(va)) == 0;
	}
	return datumIsEqual(a, b, col->att->attbyval, col->att->attlen);
}

/* The column's value in a row, as text for messages ("null" for NULL) */
static char *
show_value(GuardColumn *col, Datum v, bool isnull)
{
	return isnull ? "null" : OidOutputFunctionCall(col->typoutput, v);
}

/* ZA001 from the guard when a replicated cancel state cannot be accepted */
static void
refuse_replicated(Trigger *trigger, Relation rel, const char *detail,
				  const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
			 errmsg("trigger \"%s\" on table \"%s\" cannot accept a replicated cancellation state",
					trigger->tgname, RelationGetRelationName(rel)),
			 errdetail_internal("%s", detail),
			 errhint("%s", hint)));
}

/*
 * Whether the row change being checked, which enters a cancel state, is
 * one a logical replication worker applies itself and that nothing on this
 * server could have shaped (see the header).  Outside such a worker, or
 * for a change nested in it, returns false: the ledger's rules apply.  In
 * the worker, raises an error when it cannot be told or when code of this
 * server could have put the state there, rather than stalling without a
 * reason or taking that code's word for a cancellation.
 */
static bool
replicated_change(Trigger *trigger, Relation rel, GuardColumn *status,
				  Datum cancelled, Datum *cancelling, int ncancelling)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	Oid			ext = get_extension_oid("alipayplus_cancel", true);
	const char *colname = quote_identifier(status->name);
	const char *relname = quote_identifier(RelationGetRelationName(rel));
	Node	   *def;

	if (!IsLogicalWorker())
		return false;
	if (!exec_nesting_known)
		refuse_replicated(trigger, rel,
						  "alipayplus_cancel is not in shared_preload_libraries of this server, so the guard cannot tell the replication worker's own changes from those of other code running in it.",
						  "Add alipayplus_cancel to shared_preload_libraries on the subscriber and restart it; the subscription then resumes.");
	if (exec_nesting != 0)
		return false;

	/* code that ran in the worker could have made or hidden the state */
	if (worker_ran_code)
		refuse_replicated(trigger, rel,
						  "A trigger, foreign key action or function ran queries or commands inside the replication worker in this transaction; it runs as the subscription's owner and could have written this row or changed what the guard checks.",
						  "On the subscriber, let triggers (also those of foreign keys' ON UPDATE/ON DELETE actions) fire only for local changes (ALTER TABLE ... ENABLE TRIGGER ...), and use no function in a default of a replicated table; the subscription then resumes.");

	/* a trigger that fires in the worker, other than this extension's */
	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		Trigger    *t = &trigdesc->triggers[i];

		if ((t->tgenabled == TRIGGER_FIRES_ALWAYS ||
			 t->tgenabled == TRIGGER_FIRES_ON_REPLICA) &&
			(!OidIsValid(ext) ||
			 getExtensionOfObject(ProcedureRelationId, t->tgfoid) != ext))
			refuse_replicated(trigger, rel,
							  psprintf("Trigger \"%s\" fires in the replication worker (ENABLE ALWAYS or REPLICA), with the rights of the subscription's owner; it could have changed the row that was replicated or what the guard checks.",
									   t->tgname),
							  psprintf("Let that trigger fire only for local changes on the subscriber (ALTER TABLE %s ENABLE TRIGGER %s); the subscription then resumes.",
									   relname, quote_identifier(t->tgname)));
	}

	/*
	 * a default (or generation expression, or domain default) of the status
	 * column fills it when the publication leaves the column out: only a
	 * constant that is not a cancel state is safe
	 */
	def = build_column_default(rel, status->attnum);
	if (def != NULL)
	{
		bool		safe = false;

		def = eval_const_expressions(NULL, def);
		while (IsA(def, CoerceToDomain) || IsA(def, RelabelType))
			def = IsA(def, CoerceToDomain) ?
				(Node *) ((CoerceToDomain *) def)->arg :
				(Node *) ((RelabelType *) def)->arg;
		if (IsA(def, Const))
		{
			Const	   *c = (Const *) def;

			safe = !same_value(status, c->constvalue, c->constisnull,
							   cancelled, false);
			for (int i = 0; i < ncancelling; i++)
				if (same_value(status, c->constvalue, c->constisnull,
							   cancelling[i], false))
					safe = false;
		}
		if (!safe)
			refuse_replicated(trigger, rel,
							  psprintf("Column %s has a default or generation expression on this server (on the column or its domain) that is not a constant other than the cancel states; it fills the column when the publication leaves it out.",
									   colname),
							  psprintf("Publish column %s, and give it no default on the subscriber other than a constant such as the initial status (ALTER TABLE %s ALTER %s DROP DEFAULT); the subscription then resumes.",
									   colname, relname, colname));
	}
	return true;
}

/* A value as the ledger sees it: its text, without char(n)'s padding */
static char *
ledger_text(GuardColumn *col, Datum v)
{
	char	   *s = OidOutputFunctionCall(col->typoutput, v);

	if (getBaseType(col->att->atttypid) == BPCHAROID)
	{
		size_t		n = strlen(s);

		while (n > 0 && s[n - 1] == ' ')
			s[--n] = '\0';
	}
	return s;
}

/*
 * The ids of an order row: its request id and its payment id, each NULL
 * when absent, empty or blank.  Returns false when it has neither.
 */
static bool
order_ids(HeapTuple tuple, TupleDesc tupdesc, GuardColumn *rid,
		  GuardColumn *pid, char **request_id, char **payment_id)
{
	GuardColumn *cols[2] = {rid, pid};
	char	  **out[2] = {request_id, payment_id};

	for (int i = 0; i < 2; i++)
	{
		bool		isnull;
		Datum		v;
		char	   *s;
		const char *p;

		*out[i] = NULL;
		if (cols[i] == NULL)
			continue;
		v = heap_getattr(tuple, cols[i]->attnum, tupdesc, &isnull);
		if (isnull)
			continue;
		s = ledger_text(cols[i], v);
		for (p = s; *p && isspace((unsigned char) *p); p++)
			;
		if (*p != '\0')
			*out[i] = s;
	}
	return *request_id != NULL || *payment_id != NULL;
}

static Datum
guard(FunctionCallInfo fcinfo, bool bound)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *fname = bound ? "alipayplus_guard_order" : "alipayplus_guard_cancelled";
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	tupdesc;
	char	  **args;
	GuardColumn status;
	GuardColumn rid;
	GuardColumn pid;
	bool		has_pid = false;
	Datum		cancelled;
	Datum	   *cancelling;
	int			ncancelling;
	HeapTuple	oldtuple = NULL;
	HeapTuple	newtuple = NULL;
	Datum		oldval = (Datum) 0;
	Datum		newval = (Datum) 0;
	bool		oldnull = true;
	bool		newnull = true;
	bool		old_cancelled = false;
	bool		old_cancelling = false;
	bool		new_cancelled = false;
	bool		new_cancelling = false;
	const char *relname;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s() was not called by the trigger manager", fname),
				 errhint("Use it in CREATE TRIGGER ... UPDATE OR DELETE ... FOR EACH ROW EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED', 'CANCELLING').")));

	trigger = trigdata->tg_trigger;
	rel = trigdata->tg_relation;
	relname = RelationGetRelationName(rel);
	tupdesc = RelationGetDescr(rel);

	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_INSTEAD(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event) ||
		(!bound && TRIGGER_FIRED_BY_INSERT(trigdata->tg_event)) ||
		(bound && TRIGGER_FIRED_BEFORE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" must be %s ... FOR EACH ROW",
						trigger->tgname, relname,
						bound ? "AFTER INSERT OR UPDATE OR DELETE" :
						"BEFORE (or AFTER) UPDATE OR DELETE"),
				 errdetail("%s() guards changes of single rows.", fname)));

	if ((!bound && trigger->tgnargs < 2) || (bound && trigger->tgnargs != 5))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" has the wrong number of arguments",
						trigger->tgname, relname),
				 bound ?
				 errhint("alipayplus_bind_orders() attaches this trigger; run it again.") :
				 errhint("Pass the status column, the cancelled value and the cancelling values, e.g. ('status', 'CANCELLED', 'CANCELLING').")));

	args = trigger->tgargs;
	find_column(rel, trigger, args[0], &status);
	cancelled = arg_value(&status, args[1]);
	ncancelling = bound ? 1 : trigger->tgnargs - 2;
	cancelling = palloc(sizeof(Datum) * Max(ncancelling, 1));
	for (int i = 0; i < ncancelling; i++)
		cancelling[i] = arg_value(&status, args[2 + i]);
	if (bound)
	{
		find_column(rel, trigger, args[3], &rid);
		if (args[4][0] != '\0')
		{
			find_column(rel, trigger, args[4], &pid);
			has_pid = true;
		}
	}

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		newtuple = trigdata->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		oldtuple = trigdata->tg_trigtuple;
		newtuple = trigdata->tg_newtuple;
	}
	else
		oldtuple = trigdata->tg_trigtuple;

	if (oldtuple != NULL)
	{
		oldval = heap_getattr(oldtuple, status.attnum, tupdesc, &oldnull);
		old_cancelled = same_value(&status, oldval, oldnull, cancelled, false);
		for (int i = 0; i < ncancelling; i++)
			if (same_value(&status, oldval, oldnull, cancelling[i], false))
				old_cancelling = true;
	}
	if (newtuple != NULL)
	{
		newval = heap_getattr(newtuple, status.attnum, tupdesc, &newnull);
		new_cancelled = same_value(&status, newval, newnull, cancelled, false);
		for (int i = 0; i < ncancelling; i++)
			if (same_value(&status, newval, newnull, cancelling[i], false))
				new_cancelling = true;
	}

	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		if (old_cancelled || old_cancelling)
			ereport(ERROR,
					(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
					 errmsg("cannot delete row %s of table \"%s\": its %s is \"%s\"",
							describe_row(rel, oldtuple), relname, status.name,
							show_value(&status, oldval, oldnull)),
					 errdetail("A payment whose cancellation was requested must be kept until it is \"%s\", and then for good.",
							   args[1])));
		return PointerGetDatum(oldtuple);
	}

	if (old_cancelled && !new_cancelled)
		ereport(ERROR,
				(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
				 errmsg("cannot change %s of row %s of table \"%s\" from \"%s\" to \"%s\"",
						status.name, describe_row(rel, oldtuple), relname,
						show_value(&status, oldval, oldnull),
						show_value(&status, newval, newnull)),
				 errdetail("A cancelled payment stays \"%s\".", args[1])));
	if (old_cancelling && !new_cancelled &&
		!same_value(&status, newval, newnull, oldval, oldnull))
		ereport(ERROR,
				(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
				 errmsg("cannot change %s of row %s of table \"%s\" from \"%s\" to \"%s\"",
						status.name, describe_row(rel, oldtuple), relname,
						show_value(&status, oldval, oldnull),
						show_value(&status, newval, newnull)),
				 errdetail("A payment whose cancellation was requested can only become \"%s\".",
						   args[1]),
				 errhint("A late payment result must not change the order; see alipayplus_apply_payment_result().")));

	if (bound)
	{
		char	   *request_id;
		char	   *payment_id;
		char	   *key_field = NULL;
		char	   *key_id = NULL;

		/* the ids of a payment being cancelled are fixed */
		if (oldtuple != NULL && (old_cancelled || old_cancelling))
		{
			GuardColumn *ids[2] = {&rid, has_pid ? &pid : NULL};

			for (int i = 0; i < 2; i++)
			{
				bool		on;
				bool		nn;
				Datum		ov;
				Datum		nv;

				if (ids[i] == NULL)
					continue;
				ov = heap_getattr(oldtuple, ids[i]->attnum, tupdesc, &on);
				nv = heap_getattr(newtuple, ids[i]->attnum, tupdesc, &nn);
				if (!same_value(ids[i], ov, on, nv, nn))
					ereport(ERROR,
							(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
							 errmsg("cannot change %s of row %s of table \"%s\" from \"%s\" to \"%s\"",
									ids[i]->name, describe_row(rel, oldtuple), relname,
									show_value(ids[i], ov, on),
									show_value(ids[i], nv, nn)),
							 errdetail("The ids of a payment whose cancellation was requested are fixed.")));
			}
		}

		/*
		 * the publisher's guard and ledger already judged a replicated
		 * change into a cancel state; this ledger knows nothing of it
		 */
		if (((oldtuple == NULL && (new_cancelled || new_cancelling)) ||
			 (new_cancelled && !old_cancelled) ||
			 (new_cancelling && !old_cancelling && !old_cancelled)) &&
			replicated_change(trigger, rel, &status, cancelled, cancelling,
							  ncancelling))
			return PointerGetDatum(newtuple);

		/* no order is born cancelling or cancelled */
		if (oldtuple == NULL && (new_cancelled || new_cancelling))
			ereport(ERROR,
					(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
					 errmsg("cannot insert a row into table \"%s\" whose %s is \"%s\"",
							relname, status.name, show_value(&status, newval, newnull)),
					 errdetail("An order reaches \"%s\" or \"%s\" only through the cancellation ledger.",
							   args[2], args[1]),
					 errhint("Insert the order as it is, then request its cancellation with alipayplus_request_cancel().")));

		/* entering a cancel state needs the ledger to agree */
		if ((new_cancelled && !old_cancelled) ||
			(new_cancelling && !old_cancelling && !old_cancelled))
		{
			char	   *state = NULL;
			bool		in_tree = true;

			bool		has_key;

			has_key = order_ids(newtuple, tupdesc, &rid, has_pid ? &pid : NULL,
								&request_id, &payment_id);
			if (has_key)
				state = aps_ledger_state(RelationGetRelid(rel), request_id,
										 payment_id, &in_tree, &key_field,
										 &key_id);
			if (!in_tree)
				ereport(ERROR,
						(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						 errmsg("trigger \"%s\" on table \"%s\": alipayplus_guard_order() guards only the bound orders table",
								trigger->tgname, relname),
						 errhint("Use alipayplus_guard_cancelled() on other tables.")));

			if (new_cancelled && (state == NULL || strcmp(state, "CANCELLED") != 0))
				ereport(ERROR,
						(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
						 errmsg("cannot set %s of row %s of table \"%s\" to \"%s\": Alipay+ has not confirmed the cancellation",
								status.name, describe_row(rel, newtuple), relname, args[1]),
						 errdetail("An order becomes \"%s\" only after Alipay+ answered cancelPayment with a verified S; %s.",
								   args[1],
								   state ? "its cancellation is still in progress" :
								   "no cancellation was requested for it"),
						 errhint("Request the cancellation with alipayplus_request_cancel(); the order becomes \"%s\" on its own.",
								 args[1])));
			if (new_cancelling && state == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
						 errmsg("cannot set %s of row %s of table \"%s\" to \"%s\" directly",
								status.name, describe_row(rel, newtuple), relname, args[2]),
						 errdetail("No cancellation was requested for this payment, so Alipay+ would never be asked to cancel it."),
						 errhint("Use SELECT alipayplus_request_cancel(payment_request_id => ...); it sets \"%s\" and queues the call in the same transaction.",
								 args[2])));

			/* only the ledger's own write for this very payment */
			if (key_field == NULL ||
				!aps_ledger_write_allows(key_field, key_id,
										 ledger_text(&status, newval)))
				ereport(ERROR,
						(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
						 errmsg("cannot set %s of row %s of table \"%s\" to \"%s\": only the cancellation ledger sets it",
								status.name, describe_row(rel, newtuple), relname,
								show_value(&status, newval, newnull)),
						 errdetail("The ledger sets an order cancelling when its cancellation is requested and cancelled when Alipay+ confirmed it, for the payment the order's ids name."),
						 errhint("Use alipayplus_request_cancel(); do not change the ids of the order in the same statement.")));
		}
	}

	return PointerGetDatum(newtuple);
}

Datum
alipayplus_guard_cancelled(PG_FUNCTION_ARGS)
{
	return guard(fcinfo, false);
}

Datum
alipayplus_guard_order(PG_FUNCTION_ARGS)
{
	return guard(fcinfo, true);
}
