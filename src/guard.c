/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  alipayplus_guard_cancelled(): the trigger that keeps a cancelled
 *	  payment cancelled, whoever writes to the table.
 *
 * Usage:
 *	CREATE TRIGGER t BEFORE UPDATE OR DELETE ON orders FOR EACH ROW
 *		EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED',
 *													'CANCELLING' [, ...]);
 *
 * The first argument names the status column, the second is the final
 * cancelled value, the rest are the values that may move only to the
 * cancelled value.  A row whose status is the cancelled value keeps it; a
 * row whose status is a cancelling value keeps it or becomes cancelled;
 * neither kind of row can be deleted.  Violations raise SQLSTATE ZA001
 * with the row's primary key (or ctid) and both values in the message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "catalog/pg_index.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_guard_cancelled);

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

static bool
same_value(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

Datum
alipayplus_guard_cancelled(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Relation	rel;
	TupleDesc	tupdesc;
	char	  **args;
	int			attnum;
	HeapTuple	oldtuple;
	char	   *oldval;
	bool		old_cancelling = false;
	const char *relname;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("alipayplus_guard_cancelled() was not called by the trigger manager"),
				 errhint("Use it in CREATE TRIGGER ... BEFORE UPDATE OR DELETE ... FOR EACH ROW EXECUTE FUNCTION alipayplus_guard_cancelled('status', 'CANCELLED', 'CANCELLING').")));

	trigger = trigdata->tg_trigger;
	rel = trigdata->tg_relation;
	relname = RelationGetRelationName(rel);

	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		  TRIGGER_FIRED_BY_DELETE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" must be BEFORE UPDATE OR DELETE ... FOR EACH ROW",
						trigger->tgname, relname),
				 errdetail("alipayplus_guard_cancelled() only guards updates and deletes of single rows.")));

	if (trigger->tgnargs < 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" needs at least two arguments",
						trigger->tgname, relname),
				 errhint("Pass the status column, the cancelled value and the cancelling values, e.g. ('status', 'CANCELLED', 'CANCELLING').")));

	args = trigger->tgargs;
	tupdesc = RelationGetDescr(rel);
	attnum = SPI_fnumber(tupdesc, args[0]);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" named by trigger \"%s\" does not exist in table \"%s\"",
						args[0], trigger->tgname, relname)));

	oldtuple = trigdata->tg_trigtuple;
	oldval = SPI_getvalue(oldtuple, tupdesc, attnum);
	for (int i = 2; i < trigger->tgnargs; i++)
		if (same_value(oldval, args[i]))
			old_cancelling = true;

	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		if (same_value(oldval, args[1]) || old_cancelling)
			ereport(ERROR,
					(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
					 errmsg("cannot delete row %s of table \"%s\": its %s is \"%s\"",
							describe_row(rel, oldtuple), relname, args[0], oldval),
					 errdetail("A payment whose cancellation was requested must be kept until it is \"%s\", and then for good.",
							   args[1])));
		return PointerGetDatum(oldtuple);
	}
	else
	{
		HeapTuple	newtuple = trigdata->tg_newtuple;
		char	   *newval = SPI_getvalue(newtuple, tupdesc, attnum);

		if (same_value(oldval, args[1]) && !same_value(newval, args[1]))
			ereport(ERROR,
					(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
					 errmsg("cannot change %s of row %s of table \"%s\" from \"%s\" to \"%s\"",
							args[0], describe_row(rel, oldtuple), relname, oldval,
							newval ? newval : "null"),
					 errdetail("A cancelled payment stays \"%s\".", args[1])));
		if (old_cancelling && !same_value(newval, oldval) &&
			!same_value(newval, args[1]))
			ereport(ERROR,
					(errcode(ERRCODE_APS_CANCELLED_STATE_VIOLATION),
					 errmsg("cannot change %s of row %s of table \"%s\" from \"%s\" to \"%s\"",
							args[0], describe_row(rel, oldtuple), relname, oldval,
							newval ? newval : "null"),
					 errdetail("A payment whose cancellation was requested can only become \"%s\".",
							   args[1]),
					 errhint("A late payment result must not change the order; see alipayplus_apply_payment_result().")));
		return PointerGetDatum(newtuple);
	}
}
