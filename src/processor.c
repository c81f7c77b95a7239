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
#include "lib/stringinfo.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lock.h"
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
PG_FUNCTION_INFO_V1(alipayplus_process_resolutions);
PG_FUNCTION_INFO_V1(alipayplus_resolve_backlog);

/* a lease outlasts a call (alipayplus.timeout_ms) by this much */
#define APS_LEASE_MARGIN_MS 10000

/* the SELECT form stops claiming this long before statement_timeout */
#define APS_STATEMENT_MARGIN_MS 500

/* answers settled in one transaction at most */
#define APS_SETTLE_GROUP 256

/* an answer waits at most this long for others to be settled with it */
#define APS_SETTLE_DELAY_MS 5

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
	/* issue 15: an inquiry of a resolution rather than a cancel attempt */
	bool		resolve;
	int64		resolution_id;
	int64		inquiry_id;
} Slot;

/* a run */
typedef struct Run
{
	const ApsRunOptions *opts;
	ApsRunCounts *counts;
	MemoryContext cxt;			/* lives across the run's commits */
	MemoryContext step_cxt;		/* current in a step and between steps;
								 * reset at each step's end */
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
	TimestampTz first_done_at;	/* when the first answer not settled came */
	bool		nothing_due;
	bool		draining;		/* claim nothing more; end when all settled */
	int64		locked_run;		/* the run whose lock it holds, or 0 */
	Oid			runs_rel;		/* alipayplus.processor_runs, for that lock */
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
	/* issue 15: resolutions */
	int			kinds;			/* APS_KIND_* served */
	List	   *res_skip;		/* resolutions inquired once (no waiting) */
	TimestampTz next_inquiry;	/* the next inquiry due; 0: none known */
	int64		unknown;		/* RESOLVING resolutions, at the last look */
	char	   *inquiry_url;	/* the inquiryPayment URL, in cxt */
} Run;

/* issue 15: the resolutions' part of the pipeline (see "Resolutions") */
static int	claim_resolutions(Run *run, int want, EVP_PKEY *key,
							  const char *request_time, bool *exhausted);
static void settle_inquiry_slot(Run *run, Slot *s, const char *abandon_code,
								const char *abandon_detail, bool *interrupted);
static bool inquiry_due_again(Run *run, TimestampTz now);
static bool wait_for_inquiry(Run *run);
static bool resolve_progress_due(Run *run, int64 *unknown);
static void resolve_progress_notice(Run *run, int64 unknown);
static void resolve_done_notice(ApsRunCounts *counts);

static SPIPlanPtr plan_run_begin;
static SPIPlanPtr plan_run_update;
static SPIPlanPtr plan_stale;
static SPIPlanPtr plan_claim;
static SPIPlanPtr plan_next_due;
static SPIPlanPtr plan_due;
static SPIPlanPtr plan_follow;
static Oid	plans_ext = InvalidOid;

/* At most this many bound orders follow their ledger rows per run start */
#define APS_FOLLOW_PER_RUN 1000

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
	Oid			t_follow[] = {INT4OID, TIMESTAMPTZOID};

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
		SPI_freeplan(plan_follow);
		plan_claim = NULL;
	}
	plan_run_begin = keep("SELECT alipayplus._run_begin($1)", 1, t_one);
	plan_follow = keep("SELECT alipayplus._follow_orders($1, $2)", 2, t_follow);
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
	MemoryContextSwitchTo(run->step_cxt);
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

/*
 * End the step: commit it (procedure, worker).  Its memory goes with it,
 * so that a long run's memory stays flat: SPI's (the statements' results)
 * and the step context (with what was allocated since the last step ended).
 * What must outlive a step is in the run's context or a slot's.
 */
static void
step_end(Run *run)
{
	AtEOXact_GUC(true, run->save_nestlevel);
	SetUserIdAndSecContext(run->save_uid, run->save_sec);
	if (run->opts->mode == APS_TXN_PROCEDURE)
		SPI_commit();
	SPI_finish();
	run->spi_open = false;
	if (run->opts->mode == APS_TXN_WORKER)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();

		/*
		 * A background worker reports its statistics itself (a backend
		 * does when idle): without them autovacuum and autoanalyze would
		 * never learn of the ledger rows it writes.  At most once a
		 * second; the call returns at once otherwise.
		 */
		pgstat_report_stat(false);
	}
	MemoryContextSwitchTo(run->step_cxt);
	MemoryContextReset(run->step_cxt);
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

/* Count a call that got no answer; it is the run's last error */
static void
note_unanswered(Run *run, const char *code, const char *detail)
{
	MemoryContext old = MemoryContextSwitchTo(run->cxt);

	run->counts->unanswered++;
	/* the one before it goes: a long run keeps only the last */
	if (run->counts->last_error != NULL)
		pfree(run->counts->last_error);
	run->counts->last_error = psprintf("%s: %s", code, detail ? detail : "");
	MemoryContextSwitchTo(old);
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
		note_unanswered(run, code, detail);
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
	s->resolve = false;
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
 * The result of slot s's call (operation op) if it is to be settled now:
 * its answer, or with abandon_code (no answer) a U of our own with how long
 * it was in flight.  False if neither.
 */
static bool
slot_result(Run *run, Slot *s, const ApsOperation *op,
			const char *abandon_code, const char *abandon_detail,
			ApsCallResult *r, TimestampTz *answered_at)
{
	MemoryContext old = MemoryContextSwitchTo(s->cxt);
	bool		settle = true;

	if (s->ex != NULL && s->ex->done)
	{
		aps_operation_result(s->ex, op, s->field, s->id, r);
		*answered_at = s->ex->started_at +
			(TimestampTz) (s->ex->latency_ms * 1000.0);
		run->gateway_calls++;
		if (code_gateway_silent(result_text(r, APS_CALL_RESULT_CODE)))
			run->gateway_silent++;
	}
	else if (abandon_code != NULL)
	{
		unanswered_result(r, s->field, s->id, s->request_time,
						  abandon_code, abandon_detail);
		*answered_at = GetCurrentTimestamp();
		if (s->ex != NULL && s->ex->started_at != 0)
		{
			/* how long it was in flight before it was abandoned */
			r->values[APS_CALL_LATENCY_MS] =
				Float8GetDatum((double) (*answered_at - s->ex->started_at) / 1000.0);
			r->nulls[APS_CALL_LATENCY_MS] = false;
		}
	}
	else
		settle = false;
	MemoryContextSwitchTo(old);
	return settle;
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

		if (!s->busy)
			continue;
		if (s->resolve)
		{
			settle_inquiry_slot(run, s, abandon_code, abandon_detail,
								&interrupted);
			continue;
		}
		if (!slot_result(run, s, &aps_cancel_operation, abandon_code,
						 abandon_detail, &r, &answered_at))
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

/* Remember a row the run must not claim again */
static void
skip_add(Run *run, List **skip, int64 id)
{
	MemoryContext old = MemoryContextSwitchTo(run->cxt);
	int64	   *p = palloc(sizeof(int64));

	*p = id;
	*skip = lappend(*skip, p);
	MemoryContextSwitchTo(old);
}

/* The rows of a skip list, as a claim's bigint[] argument */
static Datum
skip_array(List *skip)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(list_length(skip), 1));
	int			k = 0;
	ListCell   *lc;

	foreach(lc, skip)
		d[k++] = Int64GetDatum(*(int64 *) lfirst(lc));
	return PointerGetDatum(construct_array(d, k, INT8OID, 8, true,
										   TYPALIGN_DOUBLE));
}

/* A claim's lease: the call's time limit and a margin */
static Interval *
claim_lease(void)
{
	Interval   *lease = palloc0(sizeof(Interval));

	lease->time = ((int64) aps_timeout_ms + APS_LEASE_MARGIN_MS) * 1000;
	return lease;
}

/*
 * Put a claimed call in a free slot: the id it sends (columns field_col
 * and field_col + 1 of the claim's row) and its request of operation op,
 * signed with request_time (sent after the commit).  The caller sets the
 * slot's row ids.
 */
static Slot *
fill_slot(Run *run, const ApsOperation *op, HeapTuple t, TupleDesc d,
		  int field_col, const char *request_time, EVP_PKEY *key,
		  const char *url)
{
	for (int j = 0; j < run->width; j++)
	{
		Slot	   *s = &run->slots[j];
		MemoryContext old;

		if (s->busy)
			continue;
		old = MemoryContextSwitchTo(s->cxt);
		s->busy = true;
		s->field = SPI_getvalue(t, d, field_col);
		s->id = SPI_getvalue(t, d, field_col + 1);
		s->request_time = pstrdup(request_time);
		s->ex = aps_prepare_exchange(op, s->field, s->id, key, url,
									 s->request_time);
		/* the engine itself stops at statement_timeout (see run_pipeline) */
		s->ex->no_statement_cap = true;
		MemoryContextSwitchTo(old);
		run->busy_slots++;
		return s;
	}
	elog(ERROR, "no free slot for a claimed call");
	return NULL;				/* keep compiler quiet */
}

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
	int			filled = 0;
	uint64		rows;
	SPITupleTable *tt;

	if (TimestampDifferenceExceeds(run->last_reap, GetCurrentTimestamp(),
								   APS_REAP_INTERVAL_MS))
		reap(run);

	v[0] = Int64GetDatum(run->counts->run_id);
	if (run->counts->run_id == 0)
		n[0] = 'n';
	v[1] = Int32GetDatum(want);
	v[2] = CStringGetTextDatum(request_time);
	v[3] = CStringGetTextDatum(attempt_caller(run));
	v[4] = IntervalPGetDatum(claim_lease());
	v[5] = skip_array(run->skip);
	if (run->kinds & APS_KIND_CANCEL)
	{
		exec_plan(plan_claim, v, n);
		rows = SPI_processed;
		tt = SPI_tuptable;
	}
	else
	{
		rows = 0;
		tt = NULL;
	}
	run->nothing_due = rows < (uint64) want;
	/* the free slots left go to the resolutions (issue 15) */
	if (run->nothing_due && (run->kinds & APS_KIND_RESOLVE))
	{
		SPITupleTable *ctt = tt;
		bool		exhausted;

		SPI_tuptable = NULL;
		filled += claim_resolutions(run, want - (int) rows, key, request_time,
									&exhausted);
		run->nothing_due = exhausted;
		tt = ctt;
	}
	for (uint64 i = 0; i < rows; i++)
	{
		HeapTuple	t = tt->vals[i];
		TupleDesc	d = tt->tupdesc;
		bool		isnull;
		char	   *kind = SPI_getvalue(t, d, 1);
		int64		cid = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		Slot	   *s;

		if (strcmp(kind, "call") != 0)
		{
			skip_add(run, &run->skip, cid);
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
		s = fill_slot(run, &aps_cancel_operation, t, d, 4, request_time, key,
					  url);
		s->cancellation_id = cid;
		s->attempt_id = DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
		filled++;
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
 * Resolutions (issue 15): the pipeline's second job kind
 *
 * A due resolution (alipayplus.resolutions, RESOLVING, next_inquiry_at
 * passed) is claimed like a cancellation, in the same claim step: SKIP
 * LOCKED, leased (next_inquiry_at moved ahead by the call's time limit and
 * the margin) and given an inquiry row "no answer yet" (U
 * local.no_answer_yet, completed_at NULL) with the request it will send,
 * all committed before the request leaves (alipayplus._claim_resolutions).
 * Its inquiryPayment call takes a slot beside the cancel calls.  Its
 * answer is settled in the same settle step by alipayplus._settle_inquiry,
 * which completes the inquiry row and applies alipayplus._resolve_step:
 * paid, failed, a cancellation requested, a person, or ask again later.
 * A call left without an answer (interrupt, time budget, shutdown) decides
 * nothing: its resolution is due again at once.
 * --------------------------------------------------------------------- */

static SPIPlanPtr plan_res_claim;
static SPIPlanPtr plan_res_settle;
static SPIPlanPtr plan_res_queue;
static Oid	res_plans_ext = InvalidOid;

/* _settle_inquiry's arguments: inquiry, decide, answered_at, the result */
#define RES_SETTLE_FIRST_COL APS_CALL_HTTP_STATUS
#define RES_SETTLE_NARGS (3 + APS_INQ_NUM_COLS - RES_SETTLE_FIRST_COL)

/* The resolutions' statements, in the step (after prepare_plans) */
static void
resolve_plans(void)
{
	static const Oid inq_types[APS_INQ_NUM_COLS - APS_CALL_NUM_COLS] = {
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID,
		INT8OID
	};
	Oid			t_claim[] = {INT8OID, INT4OID, TEXTOID, INTERVALOID, INT8ARRAYOID};
	Oid			t_settle[RES_SETTLE_NARGS];
	StringInfoData sql;

	if (res_plans_ext == plans_ext && plan_res_claim != NULL)
		return;
	if (plan_res_claim != NULL)
	{
		SPI_freeplan(plan_res_claim);
		SPI_freeplan(plan_res_settle);
		SPI_freeplan(plan_res_queue);
		plan_res_claim = NULL;
	}
	t_settle[0] = INT8OID;
	t_settle[1] = BOOLOID;
	t_settle[2] = TIMESTAMPTZOID;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT s.decision, s.next_inquiry_at"
						   " FROM alipayplus._settle_inquiry($1, $2, $3");
	for (int c = RES_SETTLE_FIRST_COL; c < APS_INQ_NUM_COLS; c++)
	{
		int			arg = 3 + c - RES_SETTLE_FIRST_COL;

		t_settle[arg] = c < APS_CALL_NUM_COLS ? aps_call_columns[c].type :
			inq_types[c - APS_CALL_NUM_COLS];
		appendStringInfo(&sql, ", $%d", arg + 1);
	}
	appendStringInfoString(&sql, ") s");
	plan_res_claim = keep("SELECT c.resolution_id, c.inquiry_id, c.sent_field, c.sent_id"
						  " FROM alipayplus._claim_resolutions($1, $2, $3, $4, $5) c",
						  5, t_claim);
	plan_res_settle = keep(sql.data, RES_SETTLE_NARGS, t_settle);
	plan_res_queue = keep("SELECT pg_catalog.count(*), pg_catalog.min(x.next_inquiry_at)"
						  " FROM alipayplus.resolutions x"
						  " WHERE x.state OPERATOR(pg_catalog.=) 'RESOLVING'",
						  0, NULL);
	pfree(sql.data);
	res_plans_ext = plans_ext;
}

/* The resolutions still unknown (run->unknown) and the next one due */
static TimestampTz
resolve_queue(Run *run)
{
	bool		isnull;
	Datum		d;

	resolve_plans();
	exec_plan(plan_res_queue, NULL, NULL);
	run->unknown = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}

/*
 * Claim up to "want" due resolutions in the current step into free slots,
 * each with its signed inquiry (sent after the commit).  *exhausted: fewer
 * were due.  Returns how many slots were filled.
 */
static int
claim_resolutions(Run *run, int want, EVP_PKEY *key, const char *request_time,
				  bool *exhausted)
{
	Datum		v[5];
	char		n[5] = "     ";
	uint64		rows;
	SPITupleTable *tt;

	*exhausted = false;
	if (want <= 0)
		return 0;
	resolve_plans();
	if (run->inquiry_url == NULL)
		run->inquiry_url = MemoryContextStrdup(run->cxt,
											   aps_operation_url(&aps_inquiry_operation));
	v[0] = Int64GetDatum(run->counts->run_id);
	if (run->counts->run_id == 0)
		n[0] = 'n';
	v[1] = Int32GetDatum(want);
	v[2] = CStringGetTextDatum(request_time);
	v[3] = IntervalPGetDatum(claim_lease());
	v[4] = skip_array(run->res_skip);
	exec_plan(plan_res_claim, v, n);
	rows = SPI_processed;
	tt = SPI_tuptable;
	*exhausted = rows < (uint64) want;
	for (uint64 i = 0; i < rows; i++)
	{
		bool		isnull;
		Slot	   *s = fill_slot(run, &aps_inquiry_operation, tt->vals[i],
								  tt->tupdesc, 3, request_time, key,
								  run->inquiry_url);

		s->resolve = true;
		s->resolution_id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc,
														1, &isnull));
		s->inquiry_id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc,
													2, &isnull));
		run->claims++;
		run->counts->claimed++;
		run->counts->inquired++;
	}
	SPI_freetuptable(tt);
	if (*exhausted && run->opts->wait_for_inquiries)
	{
		TimestampTz next = resolve_queue(run);

		/* not sooner than 100 ms: a due row locked elsewhere is not spun on */
		run->next_inquiry = next == 0 ? 0 :
			Max(next, GetCurrentTimestamp() + 100 * 1000);
	}
	return (int) rows;
}

/*
 * Settle one inquiry slot (in the settle step): its answer, or with
 * abandon_code its lack of one.  A call without an answer decides nothing.
 */
static void
settle_inquiry_slot(Run *run, Slot *s, const char *abandon_code,
					const char *abandon_detail, bool *interrupted)
{
	ApsRunCounts *c = run->counts;
	ApsCallResult r;
	TimestampTz answered_at;
	bool		decide;
	Datum		v[RES_SETTLE_NARGS];
	char		n[RES_SETTLE_NARGS + 1];
	char	   *decision = NULL;
	TimestampTz next = 0;
	char	   *code;

	/* an answer caught with an interrupt is recorded, not applied */
	decide = s->ex != NULL && s->ex->done && !*interrupted;
	if (!slot_result(run, s, &aps_inquiry_operation, abandon_code,
					 abandon_detail, &r, &answered_at))
		return;

	resolve_plans();
	memset(n, ' ', sizeof(n));
	n[RES_SETTLE_NARGS] = '\0';
	v[0] = Int64GetDatum(s->inquiry_id);
	v[1] = BoolGetDatum(decide);
	v[2] = TimestampTzGetDatum(answered_at);
	for (int col = RES_SETTLE_FIRST_COL; col < APS_INQ_NUM_COLS; col++)
	{
		int			arg = 3 + col - RES_SETTLE_FIRST_COL;

		v[arg] = r.values[col];
		if (r.nulls[col])
			n[arg] = 'n';
	}
	exec_plan(plan_res_settle, v, n);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d;

		decision = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		next = isnull ? 0 : DatumGetTimestampTz(d);
	}
	if (decision == NULL || strcmp(decision, "not_open") == 0)
		;						/* completed by another run meanwhile */
	else if (strcmp(decision, "paid") == 0)
		c->paid++;
	else if (strcmp(decision, "failed") == 0)
		c->failed++;
	else if (strcmp(decision, "cancel") == 0)
	{
		c->to_cancel++;
		/* its cancellation is due now: claim it in this run */
		if (run->kinds & APS_KIND_CANCEL)
			run->nothing_due = false;
	}
	else if (strcmp(decision, "wait") == 0 || strcmp(decision, "unanswered") == 0)
		c->waiting++;
	else if (strcmp(decision, "settled_elsewhere") == 0)
		c->settled_elsewhere++;
	else
		c->resolve_attention++;
	code = result_text(&r, APS_CALL_RESULT_CODE);
	if (code_unanswered(code))
		note_unanswered(run, code, result_text(&r, APS_CALL_ERROR_DETAIL));
	if (run->opts->wait_for_inquiries)
	{
		if (next != 0 && (run->next_inquiry == 0 || next < run->next_inquiry))
			run->next_inquiry = next;
	}
	else
	{
		/* one inquiry per resolution and run, as the SQL forms promise */
		skip_add(run, &run->res_skip, s->resolution_id);
	}
	if (!*interrupted && pending_interrupt(run) != NULL)
		*interrupted = true;
	free_slot(run, s);
}

/* Whether the next inquiry of a waiting resolution is due (wait mode) */
static bool
inquiry_due_again(Run *run, TimestampTz now)
{
	if (run->next_inquiry == 0 || now < run->next_inquiry || !run->nothing_due)
		return false;
	run->next_inquiry = 0;
	run->nothing_due = false;
	return true;
}

/*
 * Nothing in flight and nothing due: sleep a little (at most 100 ms, an
 * interrupt wakes it) if a resolution is still to be asked again; false if
 * none is.
 */
static bool
wait_for_inquiry(Run *run)
{
	long		ms;

	if (run->next_inquiry == 0)
		return false;
	ms = (long) ((run->next_inquiry - GetCurrentTimestamp()) / 1000);
	if (ms > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(ms, 100), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	return true;
}

/* Whether a progress NOTICE of alipayplus_resolve_backlog is due (in the step) */
static bool
resolve_progress_due(Run *run, int64 *unknown)
{
	if (run->opts->progress_ms <= 0 ||
		!TimestampDifferenceExceeds(run->last_progress, GetCurrentTimestamp(),
									run->opts->progress_ms))
		return false;
	(void) resolve_queue(run);
	*unknown = run->unknown;
	return true;
}

/* The words of a resolve NOTICE: what the run's inquiries decided so far */
static char *
resolve_summary(Run *run, int64 unknown)
{
	ApsRunCounts *c = run->counts;

	return psprintf("%d paid, %d failed, %d cancellations requested (%d cancelled), "
					"%d settled elsewhere, %d for a person, " INT64_FORMAT " still unknown",
					c->paid, c->failed, c->to_cancel, c->cancelled, c->settled_elsewhere,
					c->resolve_attention + c->attention, unknown);
}

/* alipayplus_resolve_backlog's progress NOTICE, outside the step */
static void
resolve_progress_notice(Run *run, int64 unknown)
{
	TimestampTz now = GetCurrentTimestamp();
	double		secs;

	if (InterruptPending)
		return;
	run->last_progress = now;
	secs = Max((double) (now - run->start) / 1000000.0, 0.001);
	ereport(NOTICE,
			(errmsg("resolving: %s; %d inquiries, %.1f per second",
					resolve_summary(run, unknown), run->counts->inquired,
					run->counts->inquired / secs)));
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

/*
 * Whether the answers in should be settled now.  Answers are grouped, one
 * commit for many: settled once an eighth of the slots have answers, or
 * the first of them has waited APS_SETTLE_DELAY_MS, or every call in
 * flight has its answer.
 */
static bool
settle_due(Run *run)
{
	int			done = 0;
	TimestampTz now;

	for (int i = 0; i < run->width; i++)
		if (run->slots[i].busy && run->slots[i].ex != NULL &&
			run->slots[i].ex->done)
			done++;
	if (done == 0)
		return false;
	if (done >= Max(1, run->width / 8) || done == run->busy_slots)
		return true;
	now = GetCurrentTimestamp();
	if (run->first_done_at == 0)
		run->first_done_at = now;
	return TimestampDifferenceExceeds(run->first_done_at, now,
									  APS_SETTLE_DELAY_MS);
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

/*
 * A working run holds a session-level lock on the object (database,
 * alipayplus.processor_runs, the low 32 bits of its run_id, 0):
 * alipayplus._run_alive looks for it in pg_locks.  No SQL can take or let
 * go of such a lock (an advisory lock could be squatted by any role, and
 * pg_advisory_unlock_all() in an order owner's trigger would let it go);
 * the run lets it go when it ends, PostgreSQL when the transaction aborts
 * (a session lock of the standard lock method does not outlive an abort)
 * or the session ends.
 */
static void
run_lock_tag(LOCKTAG *tag, Oid runs_rel, int64 run_id)
{
	SET_LOCKTAG_OBJECT(*tag, MyDatabaseId, runs_rel,
					   (uint32) (run_id & 0xFFFFFFFF), 0);
}

/* The run is run_id from here on, and holds its lock */
static void
become_run(Run *run, int64 run_id)
{
	LOCKTAG		tag;
	Oid			runs_rel = get_relname_relid("processor_runs",
											 get_namespace_oid("alipayplus", false));

	if (!OidIsValid(runs_rel))
		elog(ERROR, "table alipayplus.processor_runs not found");
	run_lock_tag(&tag, runs_rel, run_id);
	/* never waited for: only a run 2^32 ids away could hold it */
	if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("the lock of processor run " INT64_FORMAT " is held by another session", run_id)));
	run->runs_rel = runs_rel;
	run->locked_run = run_id;
	run->counts->run_id = run_id;
}

static void
release_run_lock(Run *run)
{
	LOCKTAG		tag;

	if (run->locked_run == 0)
		return;
	run_lock_tag(&tag, run->runs_rel, run->locked_run);
	/* an abort let it go already */
	if (LockHeldByMe(&tag, ExclusiveLock))
		LockRelease(&tag, ExclusiveLock, true);
	run->locked_run = 0;
}

/*
 * The worker's run begins at the first claim of a busy period, not at
 * every wake-up: its row is written only when a row is due.  In the step.
 */
static void
worker_run_begin(Run *run)
{
	Datum		v[1];
	bool		isnull;
	Datum		d;

	exec_plan(plan_next_due, NULL, NULL);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull || DatumGetTimestampTz(d) > GetCurrentTimestamp())
	{
		run->nothing_due = true;
		return;
	}
	v[0] = CStringGetTextDatum(run->opts->caller);
	exec_plan(plan_run_begin, v, " ");
	become_run(run, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc,
												1, &isnull)));
}

/*
 * continue_run may only name a run this session started and that has
 * ended: naming another session's run would let a caller mark a working
 * run's calls as its own and have them reaped as crashed.  The run is
 * working again from here on (finished_at NULL), so that no other
 * processor takes its calls for a crashed run's.
 */
static void
adopt_continue_run(int64 run_id)
{
	Oid			t[1] = {INT8OID};
	Datum		v[1];
	bool		isnull;
	bool		own;
	bool		ended;

	v[0] = Int64GetDatum(run_id);
	if (SPI_execute_with_args(
							  "SELECT x.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()"
							  " AND x.backend_start OPERATOR(pg_catalog.=)"
							  " (SELECT s.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) s),"
							  " x.finished_at IS NOT NULL"
							  " FROM alipayplus.processor_runs x WHERE x.run_id OPERATOR(pg_catalog.=) $1"
							  " FOR UPDATE",
							  1, t, v, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up processor run " INT64_FORMAT, run_id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("there is no processor run " INT64_FORMAT, run_id),
				 errhint("Pass continue_run => NULL to start a new run.")));
	own = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull || !own)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("processor run " INT64_FORMAT " was not started by this session", run_id),
				 errhint("continue_run may only name a finished run of the calling session; pass NULL to start a new run.")));
	ended = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 2, &isnull));
	if (!ended)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("processor run " INT64_FORMAT " is still running", run_id),
				 errhint("continue_run may only name a run that has finished.")));
	SPI_freetuptable(SPI_tuptable);
	if (SPI_execute_with_args(
							  "UPDATE alipayplus.processor_runs x SET finished_at = NULL,"
							  " stopped_because = 'running'"
							  " WHERE x.run_id OPERATOR(pg_catalog.=) $1",
							  1, t, v, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not reopen processor run " INT64_FORMAT, run_id);
}

/*
 * The stop reason of run->interrupted, in the run's context (it outlives
 * the step); sets the code of the calls it leaves without an answer
 */
static const char *
interrupt_stop(Run *run)
{
	run->unanswered_code = strstr(run->interrupted, "statement timeout") ?
		"local.statement_timeout" : "local.interrupted";
	return MemoryContextStrdup(run->cxt,
							   psprintf("interrupted: %s", run->interrupted));
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
	{
		adopt_continue_run(continue_run);
		become_run(run, continue_run);
	}
	else if (opts->mode != APS_TXN_WORKER)
	{
		Datum		v[1];
		bool		isnull;

		v[0] = CStringGetTextDatum(opts->caller);
		exec_plan(plan_run_begin, v, " ");
		become_run(run, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 1,
													&isnull)));
	}
	reap(run);

	/*
	 * 2. the bound orders whose update an interrupt cut (ledger.c) follow
	 * their CANCELLED ledger rows, within the run's limits; an interrupt
	 * there stops the run.  Not in the caller's transaction under a
	 * statement_timeout: an order slower than it would roll back every
	 * such run, and with it the run's own work.
	 */
	if (opts->mode != APS_TXN_CALLER || StatementTimeout == 0)
	{
		Datum		v[2];

		v[0] = Int32GetDatum((int) Min(opts->max_count, (int64) APS_FOLLOW_PER_RUN));
		v[1] = TimestampTzGetDatum(run->budget_end);
		exec_plan(plan_follow, v, "  ");
		if ((run->interrupted = pending_interrupt(run)) != NULL)
			stop = interrupt_stop(run);
	}
	step_end(run);

	for (;;)
	{
		int			free_slots = run->width - run->busy_slots;
		TimestampTz now = GetCurrentTimestamp();

		if (stop == NULL && inquiry_due_again(run, now))
			look_for_work = true;

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
				stop = interrupt_stop(run);
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
			else if (verdict == APS_POLL_DRAIN)
				run->draining = true;
			else if (verdict == APS_POLL_LOOK_FOR_WORK)
			{
				/* the worker was told of new work: claim again */
				look_for_work = true;
				run->nothing_due = false;
			}
		}

		/* settle what came in, and claim for the free slots, in one step */
		if (stop != NULL ||
			settle_due(run) ||
			(look_for_work && !run->nothing_due && !run->draining &&
			 free_slots > 0 && run->claims < opts->max_count))
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
			run->first_done_at = 0;
			if (run->interrupted == NULL &&
				(run->interrupted = pending_interrupt(run)) != NULL)
			{
				/*
				 * A cancel caught while an answer was applied: stop now.  If
				 * the run was already stopping (statement_timeout near), the
				 * calls are settled already; the stop's reason becomes the
				 * interrupt, so that it ends with PostgreSQL's error.
				 */
				bool		settled = stop != NULL;

				stop = interrupt_stop(run);
				if (!settled)
				{
					aps_http_abandon_all();
					HOLD_INTERRUPTS();
					held = true;
					settle_slots(run, run->unanswered_code, stop);
				}
			}
			free_slots = run->width - run->busy_slots;
			want = (int) Min((int64) free_slots, opts->max_count - run->claims);
			if (!held)
			{
				HOLD_INTERRUPTS();
				held = true;
			}
			if (stop == NULL && want > 0 && !run->draining &&
				(look_for_work || !run->nothing_due))
			{
				if (counts->run_id == 0 && opts->mode == APS_TXN_WORKER)
					worker_run_begin(run);
				if (counts->run_id != 0)
					claim(run, want, key, url);
				look_for_work = false;
			}
			notice = stop == NULL &&
				(opts->wait_for_inquiries ? resolve_progress_due(run, &due) :
				 progress_due(run, &due));
			flush_counts(run, stop, stop != NULL);
			step_end(run);
			RESUME_INTERRUPTS();
			if (stop != NULL)
				break;
			if (notice && opts->wait_for_inquiries)
				resolve_progress_notice(run, due);
			else if (notice)
				progress_notice(run, due);
			/* only now, committed, do the requests leave */
			send_claimed(run);
		}

		if (run->busy_slots == 0)
		{
			if (run->draining)
				stop = "configuration reloaded";
			else if (run->claims >= opts->max_count)
				stop = "max_count reached";
			else if (run->nothing_due && opts->wait_for_inquiries &&
					 wait_for_inquiry(run))
				continue;
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
	MemoryContext caller_cxt = CurrentMemoryContext;
	volatile bool began = false;

	memset(counts, 0, sizeof(*counts));
	memset(&run, 0, sizeof(run));
	cxt = AllocSetContextCreate(TopMemoryContext, "alipayplus pipeline",
								ALLOCSET_DEFAULT_SIZES);
	run.opts = opts;
	run.counts = counts;
	run.cxt = cxt;
	run.kinds = opts->kinds != 0 ? opts->kinds : APS_KIND_CANCEL | APS_KIND_RESOLVE;
	run.start = GetCurrentTimestamp();
	run.budget_end = run.start + (TimestampTz) opts->time_budget_ms * 1000;
	run.last_progress = run.start;
	PG_TRY();
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		/* refused (55006) when this session is in a run already */
		run.width = aps_http_begin(Max(1, (int) Min((int64) aps_max_concurrency,
													opts->max_count)));
		began = true;
		run.slots = palloc0(sizeof(Slot) * run.width);
		for (int i = 0; i < run.width; i++)
			run.slots[i].cxt = AllocSetContextCreate(cxt, "alipayplus call",
													 ALLOCSET_SMALL_SIZES);
		run.step_cxt = AllocSetContextCreate(cxt, "alipayplus step",
											 ALLOCSET_DEFAULT_SIZES);
		MemoryContextSwitchTo(run.step_cxt);
		run_pipeline(&run, continue_run);
		MemoryContextSwitchTo(old);

		/*
		 * What the run says of itself is in the run's context, deleted
		 * below: the caller reads it and raises it after that, so it moves
		 * to the caller's context first
		 */
		if (counts->stopped_because != NULL)
			counts->stopped_because = MemoryContextStrdup(caller_cxt,
														  counts->stopped_because);
		if (counts->last_error != NULL)
			counts->last_error = MemoryContextStrdup(caller_cxt,
													 counts->last_error);
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
			MemoryContextSwitchTo(old);
		}
		else if (run.spi_open && opts->mode != APS_TXN_CALLER)
		{
			SPI_finish();
			run.spi_open = false;
		}
	}
	PG_CATCH();
	{
		/*
		 * libcurl lets go of the calls' memory before it goes (not when
		 * this was a nested run refused: the calls are the outer run's)
		 */
		if (began)
			aps_http_end();
		release_run_lock(&run);
		MemoryContextSwitchTo(caller_cxt);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	aps_http_end();
	release_run_lock(&run);
	if (run.spi_open && opts->mode == APS_TXN_CALLER)
		SPI_finish();
	counts->elapsed_ms = (double) (GetCurrentTimestamp() - run.start) / 1000.0;
	counts->still_unknown = run.unknown;
	last_gateway_calls = run.gateway_calls;
	last_gateway_silent = run.gateway_silent;
	MemoryContextDelete(cxt);
	/*
	 * An interrupt seen and recorded: now PostgreSQL's own error, in the
	 * caller's transaction too (which then rolls back everything), even
	 * when a settle's subtransaction caught it inside an owner's trigger
	 */
	if (run.interrupted != NULL && opts->mode != APS_TXN_WORKER)
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
run_procedure(FunctionCallInfo fcinfo, const char *name, int progress_ms,
			  bool resolve)
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
	opts.wait_for_inquiries = resolve;
	run_processor(&opts, &counts, 0);
	if (resolve)
		resolve_done_notice(&counts);
	else if (progress_ms > 0)
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
	run_procedure(fcinfo, "alipayplus_run_cancellations", 0, false);
	PG_RETURN_VOID();
}

/* The progress argument (third) of the backlog procedures, in ms; 0: none */
static int
progress_argument(FunctionCallInfo fcinfo)
{
	Interval   *p;
	int64		usecs;

	if (PG_ARGISNULL(2))
		return 0;
	p = PG_GETARG_INTERVAL_P(2);
	usecs = p->time + (int64) p->day * USECS_PER_DAY;
	return (int) Max(1, Min(usecs / 1000, (int64) INT_MAX));
}

/* CALL alipayplus_process_backlog(max_count, time_budget, progress) */
Datum
alipayplus_process_backlog(PG_FUNCTION_ARGS)
{
	run_procedure(fcinfo, "alipayplus_process_backlog",
				  progress_argument(fcinfo), false);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * SQL entry points of the resolutions (issue 15)
 * --------------------------------------------------------------------- */

/* The closing NOTICE of alipayplus_resolve_backlog */
static void
resolve_done_notice(ApsRunCounts *counts)
{
	ereport(NOTICE,
			(errmsg("resolved in %.1f s (processor run %lld, %s): %d inquiries; "
					"%d paid, %d failed, %d cancellations requested, %d cancelled, "
					"%d settled elsewhere, %d for a person, %d still unknown",
					counts->elapsed_ms / 1000.0, (long long) counts->run_id,
					counts->stopped_because ? counts->stopped_because : "",
					counts->inquired, counts->paid, counts->failed,
					counts->to_cancel, counts->cancelled, counts->settled_elsewhere,
					counts->resolve_attention + counts->attention,
					(int) counts->still_unknown),
			 errhint("alipayplus.resolutions has each payment's state and decision; alipayplus.attention what a person must look at.")));
}

/*
 * CALL alipayplus_resolve_backlog(max_count, time_budget, progress): the
 * pipeline serving resolutions and cancellations, committing as it goes,
 * waiting for the next inquiry of each resolution still unknown until
 * every one is decided (or the budget is spent), with progress NOTICEs.
 */
Datum
alipayplus_resolve_backlog(PG_FUNCTION_ARGS)
{
	aps_refuse_read_only_to("resolve Alipay+ payments");
	run_procedure(fcinfo, "alipayplus_resolve_backlog",
				  progress_argument(fcinfo), true);
	PG_RETURN_VOID();
}

/*
 * alipayplus_process_resolutions(max_count, time_budget): the pipeline
 * serving the due resolutions only, one inquiry each at most, in the
 * caller's transaction; the counts of what the answers decided.
 */
Datum
alipayplus_process_resolutions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ApsRunOptions opts;
	ApsRunCounts counts;
	Datum		values[7];
	bool		nulls[7];

	aps_refuse_read_only_to("resolve Alipay+ payments");
	memset(&opts, 0, sizeof(opts));
	run_arguments(fcinfo, &opts.max_count, &opts.time_budget_ms);
	InitMaterializedSRF(fcinfo, 0);
	opts.mode = APS_TXN_CALLER;
	opts.caller = "alipayplus_process_resolutions";
	opts.kinds = APS_KIND_RESOLVE;
	run_processor(&opts, &counts, 0);
	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(counts.inquired);
	values[1] = Int32GetDatum(counts.paid);
	values[2] = Int32GetDatum(counts.failed);
	values[3] = Int32GetDatum(counts.to_cancel);
	values[4] = Int32GetDatum(counts.resolve_attention);
	values[5] = Int32GetDatum(counts.waiting);
	values[6] = Int32GetDatum(counts.settled_elsewhere);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
