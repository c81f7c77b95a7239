/*-------------------------------------------------------------------------
 *
 * processor.c
 *	  The claim-then-call pipeline that every processor form runs
 *	  (alipayplus_process_cancellations in the caller's transaction, the
 *	  procedures alipayplus_run_cancellations and alipayplus_process_backlog,
 *	  the background worker).
 *
 * Up to alipayplus.max_concurrency calls are kept in flight; each slot is
 * refilled as soon as its answer is settled.  The steps:
 *
 *	run:	a processor_runs row when the run starts ('running', pid,
 *			backend_start, caller), finished at the end with the reason it
 *			stopped.
 *	claim:	attempts left "no answer yet" by a run whose backend is gone, or
 *			whose lease expired, are completed as U local.crashed; then up
 *			to (free slots) due rows are claimed (alipayplus._claim): leased
 *			and each given an attempt row "no answer yet" with the request
 *			it will send.  Committed before any request leaves.
 *	call:	the signed requests go out through the curl multi handle of
 *			transport.c; no row lock, no snapshot, no transaction is held
 *			while they are in flight (procedure and worker modes).
 *	settle: the answers that arrived are settled together in one short
 *			transaction under ledger.c's rules (aps_settle_claimed), each
 *			completing its attempt row.
 *
 * Each step is its own transaction, except in APS_TXN_CALLER mode, which
 * never commits.  The steps run as the extension's owner with search_path
 * pg_catalog, pg_temp, like a SECURITY DEFINER function.
 *
 * Interrupts: between waits (at most 10 ms apart) the engine looks at the
 * pending-interrupt flags before PostgreSQL acts on them.  A query cancel
 * or statement_timeout in procedure mode: no more claims, the answers in
 * are settled, the calls still in flight are completed as U
 * local.interrupted / local.statement_timeout, the run is recorded
 * 'interrupted: ...', all committed, and then PostgreSQL's own error is
 * raised.  In caller mode everything rolls back with the caller, so the
 * error is raised at once.  A terminate leaves the attempts "no answer
 * yet", completed as local.crashed by the next claim.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_process_cancellations);
PG_FUNCTION_INFO_V1(alipayplus_run_cancellations);
PG_FUNCTION_INFO_V1(alipayplus_process_backlog);

/* a lease outlasts a call (alipayplus.timeout_ms) by this much */
#define APS_LEASE_MARGIN_MS 10000

/* the SELECT form stops claiming this long before statement_timeout */
#define APS_STATEMENT_MARGIN_MS 500

/* answers settled in one transaction at most */
#define APS_SETTLE_GROUP 256

/* stale attempts are looked for at most this often */
#define APS_REAP_INTERVAL_MS 1000

/* one call in flight */
typedef struct Slot
{
	bool		busy;
	int64		cancellation_id;
	int64		attempt_id;
	char	   *field;
	char	   *id;
	char	   *request_time;
	ApsHttpExchange *ex;
	MemoryContext cxt;
} Slot;

/* a run */
typedef struct Run
{
	const ApsRunOptions *opts;
	ApsRunCounts *counts;
	MemoryContext cxt;			/* lives across the run's commits */
	Oid			owner;			/* the steps run as the extension's owner */
	int			width;			/* calls in flight at most */
	Slot	   *slots;
	int			busy_slots;
	int64		claims;			/* rows claimed, for max_count */
	List	   *skip;			/* rows busy or flagged in this run */
	TimestampTz start;
	TimestampTz budget_end;
	TimestampTz last_reap;
	TimestampTz last_progress;
	bool		nothing_due;
	int			gateway_calls;	/* calls the gateway answered or not */
	int			gateway_silent; /* of which got no answer (connect, TLS, timeout) */
	int			flushed[6];		/* counts already added to the run row */
	/* the step in progress */
	Oid			save_uid;
	int			save_sec;
	int			save_nestlevel;
	bool		spi_open;
	/* why the run stops early, if it does */
	const char *interrupted;	/* 'interrupted: ...' reason, NULL if none */
	const char *unanswered_code;	/* code for calls left in flight */
} Run;

static SPIPlanPtr plan_run_begin;
static SPIPlanPtr plan_run_update;
static SPIPlanPtr plan_stale;
static SPIPlanPtr plan_claim;
static SPIPlanPtr plan_next_due;
static SPIPlanPtr plan_due;
static Oid	plans_ext = InvalidOid;

static SPIPlanPtr
keep(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

	if (p == NULL)
		elog(ERROR, "could not prepare a processor statement: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(p) != 0)
		elog(ERROR, "could not keep a processor statement");
	return p;
}

/* The statements, prepared once per backend and extension */
static void
prepare_plans(Oid ext)
{
	Oid			t_run[] = {INT8OID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID,
	INT4OID, TEXTOID, BOOLOID};
	Oid			t_claim[] = {INT8OID, INT4OID, TEXTOID, TEXTOID, INTERVALOID,
	INT8ARRAYOID};
	Oid			t_one[] = {TEXTOID};
	Oid			t_stale[] = {INT8OID};
	Oid			t_due[] = {OIDOID, OIDOID};

	if (plans_ext == ext && plan_claim != NULL)
		return;
	if (plan_claim != NULL)
	{
		SPI_freeplan(plan_run_begin);
		SPI_freeplan(plan_run_update);
		SPI_freeplan(plan_stale);
		SPI_freeplan(plan_claim);
		SPI_freeplan(plan_next_due);
		SPI_freeplan(plan_due);
		plan_claim = NULL;
	}
	plan_run_begin = keep("SELECT alipayplus._run_begin($1)", 1, t_one);
	plan_run_update = keep(
		"UPDATE alipayplus.processor_runs x SET"
		" claimed = x.claimed OPERATOR(pg_catalog.+) $2,"
		" cancelled = x.cancelled OPERATOR(pg_catalog.+) $3,"
		" retrying = x.retrying OPERATOR(pg_catalog.+) $4,"
		" attention = x.attention OPERATOR(pg_catalog.+) $5,"
		" unanswered = x.unanswered OPERATOR(pg_catalog.+) $6,"
		" busy = x.busy OPERATOR(pg_catalog.+) $7,"
		" stopped_because = COALESCE($8, x.stopped_because),"
		" finished_at = CASE WHEN $9 THEN pg_catalog.clock_timestamp() ELSE x.finished_at END"
		" WHERE x.run_id OPERATOR(pg_catalog.=) $1",
		9, t_run);
	plan_stale = keep("SELECT s.attempt_id, s.cancellation_id, s.sent_field, s.sent_id,"
					  " s.request_time, s.why FROM alipayplus._stale_attempts($1) s",
					  1, t_stale);
	plan_claim = keep("SELECT c.kind, c.cancellation_id, c.attempt_id, c.sent_field, c.sent_id"
					  " FROM alipayplus._claim($1, $2, $3, $4, $5, $6) c",
					  6, t_claim);
	plan_next_due = keep("SELECT alipayplus._next_due()", 0, NULL);
	plan_due = keep("SELECT CASE WHEN pg_catalog.has_function_privilege($1, p.oid, 'EXECUTE') THEN"
					" (SELECT pg_catalog.count(*) FROM alipayplus.cancellations x"
					"  WHERE x.state OPERATOR(pg_catalog.=) 'CANCELLING' AND NOT x.needs_attention"
					"  AND x.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()) END"
					" FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_depend d"
					" ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass"
					" AND d.objid OPERATOR(pg_catalog.=) p.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'"
					" AND d.refobjid OPERATOR(pg_catalog.=) $2"
					" WHERE p.proname OPERATOR(pg_catalog.=) 'alipayplus_queue_depth'",
					2, t_due);
	plans_ext = ext;
}

/* ---------------------------------------------------------------------
 * Steps and their transactions
 * --------------------------------------------------------------------- */

static void
step_begin(Run *run)
{
	Oid			ext;

	if (run->opts->mode == APS_TXN_WORKER)
	{
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
	}
	if (!run->spi_open)
	{
		if (SPI_connect_ext(run->opts->mode == APS_TXN_PROCEDURE ?
							SPI_OPT_NONATOMIC : 0) != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		run->spi_open = true;
	}
	ext = get_extension_oid("alipayplus_cancel", true);
	if (!OidIsValid(ext))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"alipayplus_cancel\" is not installed in this database")));
	if (!OidIsValid(run->owner))
	{
		/* the owner of the schema alipayplus, which the extension owns */
		Oid			nsp = get_namespace_oid("alipayplus", false);
		HeapTuple	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for schema %u", nsp);
		run->owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
		ReleaseSysCache(tup);
	}
	GetUserIdAndSecContext(&run->save_uid, &run->save_sec);
	SetUserIdAndSecContext(run->owner,
						   run->save_sec | SECURITY_LOCAL_USERID_CHANGE);
	run->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	prepare_plans(ext);
}

/* End the step: commit it (procedure, worker) */
static void
step_end(Run *run)
{
	AtEOXact_GUC(true, run->save_nestlevel);
	SetUserIdAndSecContext(run->save_uid, run->save_sec);
	switch (run->opts->mode)
	{
		case APS_TXN_CALLER:
			break;
		case APS_TXN_PROCEDURE:
			SPI_commit();
			break;
		case APS_TXN_WORKER:
			SPI_finish();
			run->spi_open = false;
			PopActiveSnapshot();
			CommitTransactionCommand();
			break;
	}
}

static void
exec_plan(SPIPlanPtr plan, Datum *v, const char *n)
{
	int			rc = SPI_execute_plan(plan, v, n, false, 0);

	if (rc < 0)
		elog(ERROR, "processor statement failed: %s", SPI_result_code_string(rc));
}

/* Add the counts not yet in the run row; with stop, finish it */
static void
flush_counts(Run *run, const char *stop, bool finish)
{
	ApsRunCounts *c = run->counts;
	int			now[6] = {c->claimed, c->cancelled, c->retrying, c->attention,
	c->unanswered, c->busy};
	Datum		v[9];
	char		n[9] = "         ";

	if (run->counts->run_id == 0)
		return;
	v[0] = Int64GetDatum(run->counts->run_id);
	for (int i = 0; i < 6; i++)
	{
		v[i + 1] = Int32GetDatum(now[i] - run->flushed[i]);
		run->flushed[i] = now[i];
	}
	if (stop != NULL)
		v[7] = CStringGetTextDatum(stop);
	else
		n[7] = 'n';
	v[8] = BoolGetDatum(finish);
	exec_plan(plan_run_update, v, n);
}

/* ---------------------------------------------------------------------
 * Settling
 * --------------------------------------------------------------------- */

static const char *pending_interrupt(Run *run);

/*
 * The caller an attempt records: alipayplus_process_cancellations for the
 * SQL forms, as before 1.3 (processor_runs.caller says which form ran);
 * the worker's own name for the worker
 */
static const char *
attempt_caller(Run *run)
{
	return run->opts->mode == APS_TXN_WORKER ? run->opts->caller :
		"alipayplus_process_cancellations";
}

/*
 * The codes that mean "no answer": the gateway's silence, or a call ended
 * by the caller, the run or a crash
 */
static bool
code_unanswered(const char *code)
{
	static const char *const codes[] = {
		"local.connect_failed", "local.tls_failed", "local.timeout",
		"local.interrupted", "local.statement_timeout", "local.time_budget",
		"local.crashed"
	};

	if (code == NULL)
		return false;
	for (size_t i = 0; i < lengthof(codes); i++)
		if (strcmp(code, codes[i]) == 0)
			return true;
	return false;
}

/* Whether the gateway itself was silent (for ZA004): the first three above */
static bool
code_gateway_silent(const char *code)
{
	return code != NULL && (strcmp(code, "local.connect_failed") == 0 ||
							strcmp(code, "local.tls_failed") == 0 ||
							strcmp(code, "local.timeout") == 0);
}

/* count one settled answer */
static void
count_settled(Run *run, const char *state, bool attention, const char *code,
			  const char *detail)
{
	ApsRunCounts *c = run->counts;

	if (state == NULL)
		return;
	if (attention)
		c->attention++;
	else if (strcmp(state, "CANCELLED") == 0)
		c->cancelled++;
	else
		c->retrying++;
	if (code_unanswered(code))
	{
		MemoryContext old = MemoryContextSwitchTo(run->cxt);

		c->unanswered++;
		c->last_error = psprintf("%s: %s", code, detail ? detail : "");
		MemoryContextSwitchTo(old);
	}
}

/* A U of our own for an attempt that got no answer */
static void
unanswered_result(ApsCallResult *r, const char *field, const char *id,
				  const char *request_time, const char *code,
				  const char *detail)
{
	memset(r->nulls, true, sizeof(r->nulls));
	r->values[APS_CALL_SENT_FIELD] = CStringGetTextDatum(field);
	r->nulls[APS_CALL_SENT_FIELD] = false;
	r->values[APS_CALL_SENT_ID] = CStringGetTextDatum(id);
	r->nulls[APS_CALL_SENT_ID] = false;
	r->values[APS_CALL_REQUEST_TIME] = CStringGetTextDatum(request_time);
	r->nulls[APS_CALL_REQUEST_TIME] = false;
	r->values[APS_CALL_RESULT_STATUS] = CStringGetTextDatum("U");
	r->nulls[APS_CALL_RESULT_STATUS] = false;
	r->values[APS_CALL_RESULT_CODE] = CStringGetTextDatum(code);
	r->nulls[APS_CALL_RESULT_CODE] = false;
	r->values[APS_CALL_RESULT_MESSAGE] =
		CStringGetTextDatum("no answer recorded; the outcome is unknown");
	r->nulls[APS_CALL_RESULT_MESSAGE] = false;
	r->values[APS_CALL_ERROR_DETAIL] = CStringGetTextDatum(detail);
	r->nulls[APS_CALL_ERROR_DETAIL] = false;
}

static void
free_slot(Run *run, Slot *s)
{
	s->busy = false;
	s->ex = NULL;
	MemoryContextReset(s->cxt);
	run->busy_slots--;
}

/* The code of a finished exchange's result (for the counts) */
static char *
result_text(ApsCallResult *r, int col)
{
	return r->nulls[col] ? NULL : TextDatumGetCString(r->values[col]);
}

/*
 * Settle every finished call, and with abandon_code every call still in
 * flight too (as U abandon_code); in the current step.
 */
static void
settle_slots(Run *run, const char *abandon_code, const char *abandon_detail)
{
	bool		interrupted = run->interrupted != NULL;

	for (int i = 0; i < run->width; i++)
	{
		Slot	   *s = &run->slots[i];
		ApsCallResult r;
		TimestampTz answered_at;
		char	   *state;
		bool		attention = false;
		MemoryContext old;

		if (!s->busy)
			continue;
		if (s->ex != NULL && s->ex->done)
		{
			old = MemoryContextSwitchTo(s->cxt);
			aps_cancel_result(s->ex, s->field, s->id, &r);
			MemoryContextSwitchTo(old);
			answered_at = s->ex->started_at +
				(TimestampTz) (s->ex->latency_ms * 1000.0);
			run->gateway_calls++;
			if (code_gateway_silent(result_text(&r, APS_CALL_RESULT_CODE)))
				run->gateway_silent++;
		}
		else if (abandon_code != NULL)
		{
			old = MemoryContextSwitchTo(s->cxt);
			unanswered_result(&r, s->field, s->id, s->request_time,
							  abandon_code, abandon_detail);
			MemoryContextSwitchTo(old);
			answered_at = GetCurrentTimestamp();
			if (s->ex != NULL && s->ex->started_at != 0)
			{
				/* how long it was in flight before it was abandoned */
				r.values[APS_CALL_LATENCY_MS] =
					Float8GetDatum((double) (answered_at - s->ex->started_at) / 1000.0);
				r.nulls[APS_CALL_LATENCY_MS] = false;
			}
		}
		else
			continue;
		state = aps_settle_claimed(s->cancellation_id, s->attempt_id, &r,
								   answered_at, attempt_caller(run),
								   interrupted, &attention);

		/*
		 * a cancel caught while that answer was applied: the next ones are
		 * not applied to the bound order, whose trigger may be what is slow
		 */
		if (!interrupted && pending_interrupt(run) != NULL)
			interrupted = true;
		count_settled(run, state, attention,
					  result_text(&r, APS_CALL_RESULT_CODE),
					  result_text(&r, APS_CALL_ERROR_DETAIL));
		free_slot(run, s);
	}
}

/* Complete the stale attempts of other runs as local.crashed */
static void
reap(Run *run)
{
	Datum		v[1];
	uint64		n;
	SPITupleTable *tt;

	run->last_reap = GetCurrentTimestamp();
	v[0] = Int64GetDatum(run->counts->run_id);
	exec_plan(plan_stale, v, run->counts->run_id == 0 ? "n" : " ");
	n = SPI_processed;
	tt = SPI_tuptable;
	if (n == 0)
		return;
	SPI_tuptable = NULL;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	t = tt->vals[i];
		TupleDesc	d = tt->tupdesc;
		bool		isnull;
		int64		attempt = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		int64		cid = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		ApsCallResult r;
		bool		attention;

		unanswered_result(&r, SPI_getvalue(t, d, 3), SPI_getvalue(t, d, 4),
						  SPI_getvalue(t, d, 5), "local.crashed",
						  SPI_getvalue(t, d, 6));
		(void) aps_settle_claimed(cid, attempt, &r, GetCurrentTimestamp(),
								  "alipayplus_processor", false, &attention);
	}
	SPI_freetuptable(tt);
}

/* ---------------------------------------------------------------------
 * Claiming and calling
 * --------------------------------------------------------------------- */

/*
 * Claim up to "want" rows in the current step; the claimed ones are put
 * in free slots with their signed requests (sent after the commit).
 * Returns how many slots were filled.
 */
static int
claim(Run *run, int want, EVP_PKEY *key, const char *url)
{
	Datum		v[6];
	char		n[6] = "      ";
	char	   *request_time = aps_request_time_now();
	Interval   *lease;
	int			filled = 0;
	uint64		rows;
	SPITupleTable *tt;
	Datum	   *skip;
	int			nskip = list_length(run->skip);
	int			k = 0;
	ListCell   *lc;

	if (TimestampDifferenceExceeds(run->last_reap, GetCurrentTimestamp(),
								   APS_REAP_INTERVAL_MS))
		reap(run);

	skip = palloc(sizeof(Datum) * Max(nskip, 1));
	foreach(lc, run->skip)
		skip[k++] = Int64GetDatum(*(int64 *) lfirst(lc));
	lease = palloc0(sizeof(Interval));
	lease->time = ((int64) aps_timeout_ms + APS_LEASE_MARGIN_MS) * 1000;
	v[0] = Int64GetDatum(run->counts->run_id);
	if (run->counts->run_id == 0)
		n[0] = 'n';
	v[1] = Int32GetDatum(want);
	v[2] = CStringGetTextDatum(request_time);
	v[3] = CStringGetTextDatum(attempt_caller(run));
	v[4] = IntervalPGetDatum(lease);
	v[5] = PointerGetDatum(construct_array(skip, nskip, INT8OID, 8, true,
										   TYPALIGN_DOUBLE));
	exec_plan(plan_claim, v, n);
	rows = SPI_processed;
	tt = SPI_tuptable;
	run->nothing_due = rows < (uint64) want;
	for (uint64 i = 0; i < rows; i++)
	{
		HeapTuple	t = tt->vals[i];
		TupleDesc	d = tt->tupdesc;
		bool		isnull;
		char	   *kind = SPI_getvalue(t, d, 1);
		int64		cid = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));

		if (strcmp(kind, "call") != 0)
		{
			MemoryContext old = MemoryContextSwitchTo(run->cxt);
			int64	   *p = palloc(sizeof(int64));

			*p = cid;
			run->skip = lappend(run->skip, p);
			MemoryContextSwitchTo(old);
			if (strcmp(kind, "busy") == 0)
				run->counts->busy++;
			else
			{
				/* flagged: its bound order cannot be used */
				run->claims++;
				run->counts->claimed++;
				run->counts->attention++;
			}
			continue;
		}
		run->claims++;
		run->counts->claimed++;
		for (int j = 0; j < run->width; j++)
		{
			Slot	   *s = &run->slots[j];
			MemoryContext old;

			if (s->busy)
				continue;
			old = MemoryContextSwitchTo(s->cxt);
			s->busy = true;
			s->cancellation_id = cid;
			s->attempt_id = DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
			s->field = SPI_getvalue(t, d, 4);
			s->id = SPI_getvalue(t, d, 5);
			s->request_time = pstrdup(request_time);
			s->ex = aps_prepare_cancel(s->field, s->id, key, url,
									   s->request_time);
			MemoryContextSwitchTo(old);
			run->busy_slots++;
			filled++;
			break;
		}
	}
	return filled;
}

/* Start the requests of the slots claimed and committed */
static void
send_claimed(Run *run)
{
	for (int i = 0; i < run->width; i++)
	{
		Slot	   *s = &run->slots[i];

		if (s->busy && s->ex != NULL && !s->ex->done && s->ex->easy == NULL &&
			s->ex->started_at == 0)
			aps_http_add(s->ex);
	}
}

/* ---------------------------------------------------------------------
 * The run
 * --------------------------------------------------------------------- */

/* Why PostgreSQL would stop us now, or NULL */
static const char *
pending_interrupt(Run *run)
{
	const char *guc;

	if (ProcDiePending)
		return "terminating connection";
	if (QueryCancelPending)
	{
		if (get_timeout_indicator(STATEMENT_TIMEOUT, false))
			return "canceling statement due to statement timeout";
		return "canceling statement due to user request";
	}
	/* a cancel caught while an answer was applied (ledger.c's settle) */
	guc = GetConfigOption("alipayplus_cancel.interrupted", true, false);
	if (guc != NULL && guc[0] != '\0' && strcmp(guc, "false") != 0)
		return MemoryContextStrdup(run->cxt, guc);
	return NULL;
}

static bool
any_done(Run *run)
{
	for (int i = 0; i < run->width; i++)
		if (run->slots[i].busy && run->slots[i].ex != NULL &&
			run->slots[i].ex->done)
			return true;
	return false;
}

/*
 * Whether a progress NOTICE is due; if so, how many rows are still due
 * (-1: unknown, or the caller may not see it: the figure of
 * alipayplus_queue_depth(), shown only to a role that may run that).
 * In the step.
 */
static bool
progress_due(Run *run, int64 *due)
{
	Datum		v[2];
	bool		isnull;

	*due = -1;
	if (run->opts->progress_ms <= 0 ||
		!TimestampDifferenceExceeds(run->last_progress, GetCurrentTimestamp(),
									run->opts->progress_ms))
		return false;
	v[0] = ObjectIdGetDatum(run->save_uid);
	v[1] = ObjectIdGetDatum(plans_ext);
	exec_plan(plan_due, v, "  ");
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			*due = DatumGetInt64(d);
	}
	return true;
}

/* The backlog's progress NOTICE, outside the step */
static void
progress_notice(Run *run, int64 due)
{
	TimestampTz now = GetCurrentTimestamp();
	double		secs;
	double		rate;
	int			done;
	char	   *left;

	/* a NOTICE would act on a pending interrupt (errfinish) before we can */
	if (InterruptPending)
		return;
	run->last_progress = now;
	secs = Max((double) (now - run->start) / 1000000.0, 0.001);
	done = run->counts->cancelled + run->counts->retrying + run->counts->attention;
	rate = done / secs;
	if (due >= 0 && rate > 0)
		left = psprintf("about %.0f s left", due / rate);
	else
		left = "time left unknown";
	ereport(NOTICE,
			(errmsg("%d done (%d cancelled), %.1f per second, %s still due, %s",
					done, run->counts->cancelled, rate,
					due >= 0 ? psprintf(INT64_FORMAT, due) : "how many",
					left)));
}

/* not inlined: its locals live outside run_processor's PG_TRY */
static pg_noinline void
run_pipeline(Run *run, int64 continue_run)
{
	const ApsRunOptions *opts = run->opts;
	ApsRunCounts *counts = run->counts;
	EVP_PKEY   *key;
	char	   *url;
	const char *stop = NULL;
	bool		look_for_work = true;

	/* 1. the run's row, committed at once (not in worker mode: at first claim) */
	step_begin(run);
	key = aps_check_config();
	url = MemoryContextStrdup(run->cxt, aps_cancel_url());
	SetConfigOption("alipayplus_cancel.interrupted", "false", PGC_USERSET,
					PGC_S_SESSION);
	if (continue_run != 0)
		counts->run_id = continue_run;
	else if (opts->mode != APS_TXN_WORKER)
	{
		Datum		v[1];
		bool		isnull;

		v[0] = CStringGetTextDatum(opts->caller);
		exec_plan(plan_run_begin, v, " ");
		counts->run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1,
													 &isnull));
	}
	reap(run);
	step_end(run);

	for (;;)
	{
		int			free_slots = run->width - run->busy_slots;
		TimestampTz now = GetCurrentTimestamp();

		/* why stop claiming */
		if (stop == NULL)
		{
			run->interrupted = pending_interrupt(run);
			if (run->interrupted != NULL)
			{
				if (ProcDiePending || opts->mode == APS_TXN_CALLER)
				{
					/* nothing to keep: everything rolls back, or the backend ends */
					aps_http_abandon_all();
					CHECK_FOR_INTERRUPTS();
				}
				stop = psprintf("interrupted: %s", run->interrupted);
				run->unanswered_code = strstr(run->interrupted, "statement timeout") ?
					"local.statement_timeout" : "local.interrupted";
			}
			else if (now >= run->budget_end)
			{
				stop = "time budget used";
				run->unanswered_code = "local.time_budget";
			}
			else if (StatementTimeout > 0 && opts->mode == APS_TXN_CALLER &&
					 TimestampDifferenceExceeds(GetCurrentStatementStartTimestamp(),
												now,
												StatementTimeout - APS_STATEMENT_MARGIN_MS))
			{
				stop = "statement_timeout near";
				run->unanswered_code = "local.statement_timeout";
			}
		}
		if (stop == NULL && opts->poll != NULL)
		{
			ApsPollVerdict verdict = opts->poll(opts->poll_arg);

			if (verdict == APS_POLL_STOP)
			{
				stop = "stopped: the worker is shutting down";
				run->unanswered_code = "local.interrupted";
				run->interrupted = "shutdown";
			}
			else if (verdict == APS_POLL_LOOK_FOR_WORK)
				look_for_work = true;
		}

		/* settle what came in, and claim for the free slots, in one step */
		if (stop != NULL ||
			any_done(run) ||
			(look_for_work && !run->nothing_due && free_slots > 0 &&
			 run->claims < opts->max_count))
		{
			int			want;
			bool		held = false;
			bool		notice;
			int64		due;

			if (stop != NULL)
			{
				/* the calls still in flight get no answer now */
				aps_http_abandon_all();
				if (run->interrupted != NULL)
				{
					HOLD_INTERRUPTS();
					held = true;
				}
			}
			step_begin(run);
			settle_slots(run, stop != NULL ? run->unanswered_code : NULL, stop);
			if (stop == NULL && (run->interrupted = pending_interrupt(run)) != NULL)
			{
				/* a cancel caught while an answer was applied: stop now */
				stop = psprintf("interrupted: %s", run->interrupted);
				run->unanswered_code = strstr(run->interrupted, "statement timeout") ?
					"local.statement_timeout" : "local.interrupted";
				aps_http_abandon_all();
				HOLD_INTERRUPTS();
				held = true;
				settle_slots(run, run->unanswered_code, stop);
			}
			free_slots = run->width - run->busy_slots;
			want = (int) Min((int64) free_slots, opts->max_count - run->claims);
			if (!held)
			{
				HOLD_INTERRUPTS();
				held = true;
			}
			if (stop == NULL && want > 0 && (look_for_work || !run->nothing_due))
			{
				if (counts->run_id == 0 && opts->mode == APS_TXN_WORKER)
				{
					/* the worker's run begins at the first claim of a busy period */
					Datum		v[1];
					bool		isnull;

					v[0] = CStringGetTextDatum(opts->caller);
					exec_plan(plan_run_begin, v, " ");
					counts->run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
																 SPI_tuptable->tupdesc,
																 1, &isnull));
				}
				claim(run, want, key, url);
				look_for_work = false;
			}
			notice = stop == NULL && progress_due(run, &due);
			flush_counts(run, stop, stop != NULL);
			step_end(run);
			RESUME_INTERRUPTS();
			if (stop != NULL)
				break;
			if (notice)
				progress_notice(run, due);
			/* only now, committed, do the requests leave */
			send_claimed(run);
		}

		if (run->busy_slots == 0)
		{
			if (run->claims >= opts->max_count)
				stop = "max_count reached";
			else if (run->nothing_due)
				stop = "nothing due";
			else if (run->gateway_calls >= 3 &&
					 run->gateway_silent == run->gateway_calls)
				stop = "gateway not answering";
			if (stop != NULL)
			{
				step_begin(run);
				if (counts->run_id != 0)
					flush_counts(run, stop, true);
				step_end(run);
				break;
			}
			continue;
		}
		aps_http_wait(10);
	}
	counts->stopped_because = stop;
}

/*
 * Run the pipeline (see the top of this file).  Frees every curl resource
 * on every path.
 */
static int	last_gateway_calls;
static int	last_gateway_silent;

static void
run_processor(const ApsRunOptions *opts, ApsRunCounts *counts,
			  int64 continue_run)
{
	Run			run;
	MemoryContext cxt;

	memset(counts, 0, sizeof(*counts));
	memset(&run, 0, sizeof(run));
	cxt = AllocSetContextCreate(TopMemoryContext, "alipayplus pipeline",
								ALLOCSET_DEFAULT_SIZES);
	run.opts = opts;
	run.counts = counts;
	run.cxt = cxt;
	run.start = GetCurrentTimestamp();
	run.budget_end = run.start + (TimestampTz) opts->time_budget_ms * 1000;
	run.last_progress = run.start;
	PG_TRY();
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		run.width = aps_http_begin(Max(1, (int) Min((int64) aps_max_concurrency,
													opts->max_count)));
		run.slots = palloc0(sizeof(Slot) * run.width);
		for (int i = 0; i < run.width; i++)
			run.slots[i].cxt = AllocSetContextCreate(cxt, "alipayplus call",
													 ALLOCSET_SMALL_SIZES);
		MemoryContextSwitchTo(old);
		run_pipeline(&run, continue_run);
		if (opts->mode == APS_TXN_WORKER)
		{
			StartTransactionCommand();
			if (SPI_connect() == SPI_OK_CONNECT)
			{
				Datum		d;
				bool		isnull;

				PushActiveSnapshot(GetTransactionSnapshot());
				prepare_plans(get_extension_oid("alipayplus_cancel", false));
				exec_plan(plan_next_due, NULL, NULL);
				d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
				counts->next_due = isnull ? 0 : DatumGetTimestampTz(d);
				PopActiveSnapshot();
				SPI_finish();
			}
			CommitTransactionCommand();
		}
		else if (run.spi_open && opts->mode != APS_TXN_CALLER)
		{
			SPI_finish();
			run.spi_open = false;
		}
	}
	PG_CATCH();
	{
		/* libcurl lets go of the calls' memory before it goes */
		aps_http_abandon_all();
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	aps_http_abandon_all();
	if (run.spi_open && opts->mode == APS_TXN_CALLER)
		SPI_finish();
	counts->elapsed_ms = (double) (GetCurrentTimestamp() - run.start) / 1000.0;
	last_gateway_calls = run.gateway_calls;
	last_gateway_silent = run.gateway_silent;
	if (counts->last_error != NULL)
		counts->last_error = pstrdup(counts->last_error);
	MemoryContextDelete(cxt);
	/* an interrupt seen and recorded: now PostgreSQL's own error */
	if (run.interrupted != NULL && opts->mode == APS_TXN_PROCEDURE)
	{
		CHECK_FOR_INTERRUPTS();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("%s", counts->stopped_because + strlen("interrupted: "))));
	}
}

void
aps_run_processor(const ApsRunOptions *opts, ApsRunCounts *counts)
{
	run_processor(opts, counts, 0);
}

/* ---------------------------------------------------------------------
 * SQL entry points
 * --------------------------------------------------------------------- */

/* max_count and time_budget as the SQL forms take them */
static void
run_arguments(FunctionCallInfo fcinfo, int64 *max_count, int *budget_ms)
{
	Interval   *budget;
	int64		usecs;

	if (PG_ARGISNULL(0) || PG_GETARG_INT32(0) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be at least 1")));
	*max_count = PG_GETARG_INT32(0);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time_budget must be positive")));
	budget = PG_GETARG_INTERVAL_P(1);
	usecs = budget->time + (int64) budget->day * USECS_PER_DAY +
		(int64) budget->month * 30 * USECS_PER_DAY;
	if (usecs <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time_budget must be positive")));
	if (usecs > (int64) 24 * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time_budget must be at most 24 days"),
				 errdetail("A run's calls are bounded by what is left of its time budget, in milliseconds that must fit an integer."),
				 errhint("A run is meant to take seconds to hours: give a shorter time_budget and run it again.")));
	*budget_ms = (int) (usecs / 1000);
}

/*
 * alipayplus_process_cancellations(max_count, time_budget, continue_run):
 * the pipeline in the caller's transaction; one row of counts.
 */
Datum
alipayplus_process_cancellations(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ApsRunOptions opts;
	ApsRunCounts counts;
	Datum		values[9];
	bool		nulls[9];

	memset(&opts, 0, sizeof(opts));
	run_arguments(fcinfo, &opts.max_count, &opts.time_budget_ms);
	InitMaterializedSRF(fcinfo, 0);
	opts.mode = APS_TXN_CALLER;
	opts.caller = "alipayplus_process_cancellations";
	run_processor(&opts, &counts, PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2));
	memset(nulls, 0, sizeof(nulls));
	values[0] = Int64GetDatum(counts.run_id);
	values[1] = Int32GetDatum(counts.claimed);
	values[2] = Int32GetDatum(counts.cancelled);
	values[3] = Int32GetDatum(counts.retrying);
	values[4] = Int32GetDatum(counts.attention);
	values[5] = Int32GetDatum(counts.unanswered);
	values[6] = Int32GetDatum(counts.busy);
	values[7] = DirectFunctionCall2(numeric_round,
									DirectFunctionCall1(float8_numeric,
														Float8GetDatum(counts.elapsed_ms)),
									Int32GetDatum(1));
	if (counts.last_error != NULL)
		values[8] = CStringGetTextDatum(counts.last_error);
	else
		nulls[8] = true;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * The procedures: the pipeline committing as it goes.  Refused (25001)
 * where they cannot commit, before anything is claimed or sent; and a
 * COMMIT first, the only sure test (a caller's deferred constraint lets
 * the call context say it can commit, yet makes the first COMMIT fail).
 */
static void
run_procedure(FunctionCallInfo fcinfo, const char *name, int progress_ms)
{
	ApsRunOptions opts;
	ApsRunCounts counts;

	aps_require_top_level(fcinfo, name);
	memset(&opts, 0, sizeof(opts));
	run_arguments(fcinfo, &opts.max_count, &opts.time_budget_ms);
	if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_commit();
	SPI_finish();
	opts.mode = APS_TXN_PROCEDURE;
	opts.caller = name;
	opts.progress_ms = progress_ms;
	run_processor(&opts, &counts, 0);
	if (progress_ms > 0)
		ereport(NOTICE,
				(errmsg("%d done (%d cancelled) in %.0f s, processor run %lld",
						counts.claimed, counts.cancelled,
						counts.elapsed_ms / 1000.0, (long long) counts.run_id)));
	if (last_gateway_calls > 0 && last_gateway_silent == last_gateway_calls)
		ereport(ERROR,
				(errcode(MAKE_SQLSTATE('Z', 'A', '0', '0', '4')),
				 errmsg("the Alipay+ gateway did not answer any of the %d attempts of processor run %lld",
						last_gateway_calls, (long long) counts.run_id),
				 errdetail("Last: %s. The attempts are recorded in alipayplus.cancel_attempts and each cancellation backs off on its own.",
						   counts.last_error ? counts.last_error : "none"),
				 errhint("Check alipayplus.gateway_url, alipayplus.ca_file and the network.")));
}

/* CALL alipayplus_run_cancellations(max_count, time_budget) */
Datum
alipayplus_run_cancellations(PG_FUNCTION_ARGS)
{
	run_procedure(fcinfo, "alipayplus_run_cancellations", 0);
	PG_RETURN_VOID();
}

/* CALL alipayplus_process_backlog(max_count, time_budget, progress) */
Datum
alipayplus_process_backlog(PG_FUNCTION_ARGS)
{
	int			progress_ms = 0;

	if (!PG_ARGISNULL(2))
	{
		Interval   *p = PG_GETARG_INTERVAL_P(2);
		int64		usecs = p->time + (int64) p->day * USECS_PER_DAY;

		progress_ms = (int) Max(1, Min(usecs / 1000, (int64) INT_MAX));
	}
	run_procedure(fcinfo, "alipayplus_process_backlog", progress_ms);
	PG_RETURN_VOID();
}
