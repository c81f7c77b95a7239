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
 * MATERIALIZED VIEW and for foreign key checks), with the search_path the
 * owner's own sessions get (never the caller's) and pg_temp last, and
 * undoes any setting the owner's code changed.
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
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_order_exec);

/*
 * The status write the ledger is making right now, if any: which payment
 * (its ledger key) and which status.  The bound orders table's guard lets
 * a row enter a cancel state only for this write, so that no other
 * statement (a user's UPDATE, a trigger of the owner's running inside the
 * ledger's own update) can put an order into a cancel state.
 */
typedef struct ApsLedgerWrite
{
	char	   *field;
	char	   *id;
	char	   *status;
} ApsLedgerWrite;

static ApsLedgerWrite *current_write = NULL;

bool
aps_ledger_write_allows(const char *field, const char *id, const char *status)
{
	return current_write != NULL &&
		strcmp(current_write->field, field) == 0 &&
		strcmp(current_write->id, id) == 0 &&
		strcmp(current_write->status, status) == 0;
}

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
 * A search_path with every pg_temp entry taken out and pg_temp put last:
 * the temporary schema is the calling session's, never the owner's.
 */
static char *
without_pg_temp(const char *path)
{
	char	   *copy = pstrdup(path);
	List	   *names;
	ListCell   *lc;
	StringInfoData buf;

	initStringInfo(&buf);
	if (!SplitIdentifierString(copy, ',', &names))
		names = NIL;			/* unparsable: fall back to the default */
	foreach(lc, names)
	{
		char	   *name = (char *) lfirst(lc);

		if (strcmp(name, "pg_temp") == 0 || strncmp(name, "pg_temp_", 8) == 0)
			continue;
		if (buf.len > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, strcmp(name, "$user") == 0 ?
							   "\"$user\"" : quote_identifier(name));
	}
	if (buf.len == 0)
		appendStringInfoString(&buf, "\"$user\", public");
	appendStringInfoString(&buf, ", pg_temp");
	return buf.data;
}

/*
 * The calling session's temporary tables, views and types would be found
 * by the owner's code through any unqualified name its own search_path
 * does not resolve (pg_temp can be put last, never left out), and a
 * trigger on such a table would run as the owner.  So the owner's code
 * runs only from sessions that have none.  (Hiding the temporary schema
 * instead, as 1.3 did before its release, broke PostgreSQL's bookkeeping
 * of it as soon as the owner's code touched pg_temp.)  Under a connection
 * pooler, the pooler's reset query keeps one client's temporary objects
 * from reaching another client's transactions.
 */
static void
refuse_temp_objects(void)
{
	int			ret;
	bool		isnull;

	ret = SPI_execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
					  "WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()) "
					  "OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t "
					  "WHERE t.typnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())",
					  true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not look for temporary objects");
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								   1, &isnull)) && !isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot work on the orders table from a session that has temporary tables or types"),
				 errdetail("The table owner's triggers and constraints run as the owner, and could otherwise reach this session's temporary objects."),
				 errhint("Drop the temporary objects (DISCARD TEMP), or call from another session; behind a pooler in transaction mode, set server_reset_query = DISCARD ALL and server_reset_query_always = 1 (PgBouncer).")));
}

/*
 * The search_path the table owner's own sessions get in this database
 * (ALTER ROLE ... IN DATABASE, ALTER ROLE, ALTER DATABASE ... SET, in that
 * order of precedence), else PostgreSQL's default, always with pg_temp
 * explicitly last.  Never the calling session's: the caller could point it
 * at its own temporary objects and have the owner's code run them.
 * Must be called inside an SPI connection.
 */
static char *
owner_search_path(Oid owner)
{
	Oid			argtypes[2] = {OIDOID, OIDOID};
	Datum		args[2];
	char	   *path = "\"$user\", public";
	int			ret;

	args[0] = ObjectIdGetDatum(owner);
	args[1] = ObjectIdGetDatum(MyDatabaseId);
	ret = SPI_execute_with_args("SELECT pg_catalog.substr(s, 13) "
								"FROM pg_catalog.pg_db_role_setting d, "
								"pg_catalog.unnest(d.setconfig) s "
								"WHERE pg_catalog.left(s, 12) OPERATOR(pg_catalog.=) 'search_path=' "
								"AND ((d.setrole OPERATOR(pg_catalog.=) $1 AND d.setdatabase OPERATOR(pg_catalog.=) $2) "
								"OR (d.setrole OPERATOR(pg_catalog.=) $1 AND d.setdatabase OPERATOR(pg_catalog.=) 0) "
								"OR (d.setrole OPERATOR(pg_catalog.=) 0 AND d.setdatabase OPERATOR(pg_catalog.=) $2)) "
								"ORDER BY d.setrole OPERATOR(pg_catalog.<>) 0 AND d.setdatabase OPERATOR(pg_catalog.<>) 0 DESC, "
								"d.setrole OPERATOR(pg_catalog.<>) 0 DESC LIMIT 1",
								2, argtypes, args, NULL, true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v != NULL)
			path = v;
	}
	return without_pg_temp(path);
}

/*
 * alipayplus._order_exec(tbl regclass, query text, params text[],
 *						  param_columns name[], ledger_write text[])
 *	  RETURNS SETOF text[]
 *
 * Run query, with $1..$n bound to params, as the owner of tbl.  A param
 * whose param_columns entry names a column of tbl is converted to that
 * column's type (and type modifier) by the type's input function; the
 * others are text.  So the query needs no cast by type name, and its
 * operators are schema-qualified: nothing in it resolves through a
 * search_path.  ledger_write, when given, is {field, id, status}: the
 * ledger's own status write that this query makes, which the guard lets
 * through (see current_write).  Every result row comes back as an array of
 * its columns' text forms.  The query is built by the extension's own SQL with quoted
 * identifiers; the function is not granted to anybody.
 */
Datum
alipayplus_order_exec(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	Oid			owner;
	char	   *query;
	int			nargs = 0;
	Datum	   *elems = NULL;
	bool	   *elemnulls = NULL;
	char	  **cols = NULL;
	Oid		   *argtypes = NULL;
	Datum	   *argvalues = NULL;
	char	   *argnulls = NULL;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	char	   *search_path;
	int			ret;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table and query must not be null")));
	relid = PG_GETARG_OID(0);
	query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	owner = relation_owner(relid);

	if (!PG_ARGISNULL(2))
		deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, &elemnulls, &nargs);
	cols = palloc0(sizeof(char *) * Max(nargs, 1));
	if (!PG_ARGISNULL(3))
	{
		Datum	   *names;
		bool	   *namenulls;
		int			nnames;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(3), NAMEOID, NAMEDATALEN,
						  false, TYPALIGN_CHAR, &names, &namenulls, &nnames);
		for (int i = 0; i < nnames && i < nargs; i++)
			if (!namenulls[i])
				cols[i] = NameStr(*DatumGetName(names[i]));
	}
	argtypes = palloc(sizeof(Oid) * Max(nargs, 1));
	argvalues = palloc(sizeof(Datum) * Max(nargs, 1));
	argnulls = palloc(Max(nargs, 1) + 1);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	refuse_temp_objects();
	search_path = owner_search_path(owner);
	save_nestlevel = enter_owner_context(owner, search_path,
										 &save_userid, &save_sec_context);

	/* parameters into the columns' types, as the owner (domain checks) */
	for (int i = 0; i < nargs; i++)
	{
		argnulls[i] = elemnulls[i] ? 'n' : ' ';
		argtypes[i] = TEXTOID;
		argvalues[i] = elems[i];
		if (cols[i] != NULL)
		{
			AttrNumber	attnum = get_attnum(relid, cols[i]);
			Oid			typid;
			int32		typmod;
			Oid			collid;
			Oid			typinput;
			Oid			typioparam;

			if (attnum == InvalidAttrNumber)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_COLUMN),
						 errmsg("column \"%s\" does not exist in table \"%s\"",
								cols[i], get_rel_name(relid))));
			get_atttypetypmodcoll(relid, attnum, &typid, &typmod, &collid);
			getTypeInputInfo(typid, &typinput, &typioparam);
			argtypes[i] = typid;
			argvalues[i] = elemnulls[i] ? (Datum) 0 :
				OidInputFunctionCall(typinput, TextDatumGetCString(elems[i]),
									 typioparam, typmod);
		}
	}
	argnulls[nargs] = '\0';

	if (!PG_ARGISNULL(4))
	{
		Datum	   *w;
		bool	   *wnulls;
		int			nw;
		ApsLedgerWrite *volatile saved = current_write;
		ApsLedgerWrite this_write;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(4), TEXTOID, -1, false,
						  TYPALIGN_INT, &w, &wnulls, &nw);
		if (nw != 3 || wnulls[0] || wnulls[1] || wnulls[2])
			elog(ERROR, "ledger_write must be {field, id, status}");
		this_write.field = TextDatumGetCString(w[0]);
		this_write.id = TextDatumGetCString(w[1]);
		this_write.status = TextDatumGetCString(w[2]);
		current_write = &this_write;
		PG_TRY();
		{
			ret = SPI_execute_with_args(query, nargs, argtypes, argvalues,
										argnulls, false, 0);
		}
		PG_FINALLY();
		{
			current_write = saved;
		}
		PG_END_TRY();
	}
	else
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
			Datum	   *vals = palloc(sizeof(Datum) * Max(desc->natts, 1));
			bool	   *valnulls = palloc(sizeof(bool) * Max(desc->natts, 1));
			int			dims[1];
			int			lbs[1];
			Datum		result;
			bool		resultnull = false;

			for (int c = 0; c < desc->natts; c++)
			{
				char	   *v = SPI_getvalue(tuple, desc, c + 1);

				valnulls[c] = (v == NULL);
				vals[c] = v ? CStringGetTextDatum(v) : (Datum) 0;
			}
			dims[0] = desc->natts;
			lbs[0] = 1;
			result = PointerGetDatum(construct_md_array(vals, valnulls, 1, dims,
														lbs, TEXTOID, -1, false,
														TYPALIGN_INT));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc,
								 &result, &resultnull);
		}
	}

	leave_owner_context(save_userid, save_sec_context, save_nestlevel);
	SPI_finish();
	return (Datum) 0;
}

/*
 * The state of the ledger row for a payment, as the ledger's owner sees
 * it: "CANCELLING", "CANCELLED", or NULL when there is none (or the
 * extension's schema is gone).  The payment is an order's request id and
 * payment id (either may be NULL); its ledger row is the one that knows
 * its request id, or one that knows its payment id and no request id,
 * whichever id it sends (a cancellation requested by payment id before
 * the order stored that id knows the request id once an order names
 * both).  A row of another request id is another payment, whatever
 * payment id it holds: orders often hold a placeholder such as 'N/A'.  Should there be several, the one the ledger is writing for
 * comes first, then a CANCELLED one.  *key_field and *key_id are that
 * row's key (the id it sends), for aps_ledger_write_allows().  Only for
 * the bound orders table and the tables below it: *bound is set to false
 * (and NULL returned) for any other relation, so that the guard trigger
 * cannot be used to read the ledger from elsewhere.
 */
char *
aps_ledger_state(Oid relid, const char *request_id, const char *payment_id,
				 bool *bound, char **key_field, char **key_id)
{
	Oid			ledger;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	Oid			argtypes[5] = {TEXTOID, TEXTOID, OIDOID, TEXTOID, TEXTOID};
	Datum		args[5];
	char		nulls[5] = "     ";
	bool		isnull;
	char	   *state = NULL;
	MemoryContext caller = CurrentMemoryContext;
	int			ret;

	*bound = false;
	*key_field = NULL;
	*key_id = NULL;

	/* catalog look-ups without permission checks: the writer may not see the schema */
	ledger = get_relname_relid("cancellations",
							   get_namespace_oid("alipayplus", true));
	if (!OidIsValid(ledger))
		return NULL;

	args[0] = request_id ? CStringGetTextDatum(request_id) : (Datum) 0;
	nulls[0] = request_id ? ' ' : 'n';
	args[1] = payment_id ? CStringGetTextDatum(payment_id) : (Datum) 0;
	nulls[1] = payment_id ? ' ' : 'n';
	args[2] = ObjectIdGetDatum(relid);
	args[3] = current_write ? CStringGetTextDatum(current_write->field) : (Datum) 0;
	nulls[3] = current_write ? ' ' : 'n';
	args[4] = current_write ? CStringGetTextDatum(current_write->id) : (Datum) 0;
	nulls[4] = current_write ? ' ' : 'n';

	save_nestlevel = enter_owner_context(relation_owner(ledger),
										 "pg_catalog, pg_temp",
										 &save_userid, &save_sec_context);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args("WITH RECURSIVE tree(r) AS ("
								" SELECT b.orders::pg_catalog.oid FROM alipayplus.order_binding b"
								" UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i"
								" JOIN tree ON i.inhparent OPERATOR(pg_catalog.=) tree.r) "
								"SELECT EXISTS (SELECT 1 FROM tree WHERE tree.r OPERATOR(pg_catalog.=) $3), "
								"l.state, l.sent_field, l.sent_id "
								"FROM (VALUES (1)) one (x) LEFT JOIN LATERAL ("
								" SELECT c.state, c.sent_field, c.sent_id FROM alipayplus.cancellations c "
								" WHERE c.payment_request_id OPERATOR(pg_catalog.=) $1 "
								" OR (c.payment_id OPERATOR(pg_catalog.=) $2"
								"  AND c.payment_request_id IS NULL) "
								" ORDER BY (c.sent_field OPERATOR(pg_catalog.=) $4"
								"  AND c.sent_id OPERATOR(pg_catalog.=) $5) DESC NULLS LAST,"
								" c.state OPERATOR(pg_catalog.=) 'CANCELLED' DESC, c.cancellation_id"
								" LIMIT 1) l ON true",
								5, argtypes, args, nulls, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "ledger look-up failed: %s", SPI_result_code_string(ret));
	*bound = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull)) && !isnull;
	if (*bound)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 2);

		if (v != NULL)
		{
			state = MemoryContextStrdup(caller, v);
			*key_field = MemoryContextStrdup(caller,
											 SPI_getvalue(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 3));
			*key_id = MemoryContextStrdup(caller,
										  SPI_getvalue(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc, 4));
		}
	}
	SPI_finish();
	leave_owner_context(save_userid, save_sec_context, save_nestlevel);
	return state;
}
