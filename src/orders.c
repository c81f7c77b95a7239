/*-------------------------------------------------------------------------
 *
 * orders.c
 *	  Access to tables the extension does not own, with no more rights
 *	  than their owners have.
 *
 * The ledger functions are SECURITY DEFINER and so run as the superuser
 * who installed the extension.  Whatever they do to a user's orders table
 * (lock a row, read it, update it) fires that table's triggers, CHECK
 * constraints, domain checks and index expressions: the table owner's
 * code.  alipayplus._order_exec() runs such a query as the table's owner,
 * in a restricted security context (as PostgreSQL does for REFRESH
 * MATERIALIZED VIEW and for foreign key checks), with the session's
 * configured search_path, and undoes any setting the owner's code changed.
 *
 * aps_ledger_state() goes the other way: the guard trigger of a bound
 * orders table runs as whoever writes to that table, who may not read the
 * ledger.  It looks up a ledger row as the ledger's owner, with a fixed
 * query on the extension's own table only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_order_exec);

/* The owner of a relation; error if it does not exist */
static Oid
relation_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Become "owner" for the rest of the current (sub)transaction's work on the
 * table: returns the GUC nest level to pass to leave_owner_context().  An
 * error on the way is cleaned up by transaction abort, which restores the
 * user id and the settings.
 */
static int
enter_owner_context(Oid owner, const char *search_path, Oid *save_userid,
					int *save_sec_context)
{
	int			save_nestlevel;

	GetUserIdAndSecContext(save_userid, save_sec_context);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", search_path,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	SetUserIdAndSecContext(owner,
						   *save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	return save_nestlevel;
}

static void
leave_owner_context(Oid save_userid, int save_sec_context, int save_nestlevel)
{
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * alipayplus._order_exec(tbl regclass, query text, params text[])
 *	  RETURNS SETOF text[]
 *
 * Run query, with $1..$n bound to params as text, as the owner of tbl.
 * Every result row comes back as an array of its columns' text forms.
 * The query is built by the extension's own SQL with quoted identifiers;
 * the function is not granted to anybody.
 */
Datum
alipayplus_order_exec(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	char	   *query;
	int			nargs = 0;
	Oid		   *argtypes = NULL;
	Datum	   *argvalues = NULL;
	char	   *argnulls = NULL;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	const char *search_path;
	int			ret;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table and query must not be null")));
	relid = PG_GETARG_OID(0);
	query = text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (!PG_ARGISNULL(2))
	{
		ArrayType  *params = PG_GETARG_ARRAYTYPE_P(2);
		Datum	   *elems;
		bool	   *elemnulls;

		deconstruct_array(params, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &elemnulls, &nargs);
		argtypes = palloc(sizeof(Oid) * Max(nargs, 1));
		argvalues = palloc(sizeof(Datum) * Max(nargs, 1));
		argnulls = palloc(Max(nargs, 1) + 1);
		for (int i = 0; i < nargs; i++)
		{
			argtypes[i] = TEXTOID;
			argvalues[i] = elems[i];
			argnulls[i] = elemnulls[i] ? 'n' : ' ';
		}
		argnulls[nargs] = '\0';
	}

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	/*
	 * The owner's triggers see the search_path the session was configured
	 * with (postgresql.conf, ALTER ROLE/DATABASE), not the ledger
	 * functions' pinned one, so that their unqualified names resolve as
	 * they would for the application.
	 */
	search_path = GetConfigOptionResetString("search_path");
	save_nestlevel = enter_owner_context(relation_owner(relid),
										 search_path ? search_path : "\"$user\", public",
										 &save_userid, &save_sec_context);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args(query, nargs, argtypes, argvalues, argnulls,
								false, 0);
	if (ret < 0)
		elog(ERROR, "SPI_execute_with_args failed: %s",
			 SPI_result_code_string(ret));

	if (SPI_tuptable != NULL)
	{
		TupleDesc	desc = SPI_tuptable->tupdesc;

		for (uint64 row = 0; row < SPI_processed; row++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[row];
			Datum	   *cols = palloc(sizeof(Datum) * Max(desc->natts, 1));
			bool	   *colnulls = palloc(sizeof(bool) * Max(desc->natts, 1));
			int			dims[1];
			int			lbs[1];
			Datum		result;
			bool		resultnull = false;

			for (int c = 0; c < desc->natts; c++)
			{
				char	   *v = SPI_getvalue(tuple, desc, c + 1);

				colnulls[c] = (v == NULL);
				cols[c] = v ? CStringGetTextDatum(v) : (Datum) 0;
			}
			dims[0] = desc->natts;
			lbs[0] = 1;
			result = PointerGetDatum(construct_md_array(cols, colnulls, 1, dims,
														lbs, TEXTOID, -1, false,
														TYPALIGN_INT));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc,
								 &result, &resultnull);
		}
	}
	SPI_finish();

	leave_owner_context(save_userid, save_sec_context, save_nestlevel);
	return (Datum) 0;
}

/*
 * The state of the ledger row for an id, as the ledger's owner sees it:
 * "CANCELLING", "CANCELLED", or NULL when there is none (or the extension's
 * schema is gone).  field is "paymentRequestId" or "paymentId".
 */
char *
aps_ledger_state(const char *field, const char *id)
{
	Oid			ledger;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	char	   *state = NULL;
	MemoryContext caller = CurrentMemoryContext;
	int			ret;

	/* catalog look-ups without permission checks: the writer may not see the schema */
	ledger = get_relname_relid("cancellations",
							   get_namespace_oid("alipayplus", true));
	if (!OidIsValid(ledger))
		return NULL;

	args[0] = CStringGetTextDatum(field);
	args[1] = CStringGetTextDatum(id);

	save_nestlevel = enter_owner_context(relation_owner(ledger),
										 "pg_catalog, pg_temp",
										 &save_userid, &save_sec_context);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args("SELECT c.state FROM alipayplus.cancellations c "
								"WHERE c.sent_field OPERATOR(pg_catalog.=) $1 "
								"AND c.sent_id OPERATOR(pg_catalog.=) $2",
								2, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "ledger look-up failed: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1);

		if (v != NULL)
			state = MemoryContextStrdup(caller, v);
	}
	SPI_finish();
	leave_owner_context(save_userid, save_sec_context, save_nestlevel);
	return state;
}
