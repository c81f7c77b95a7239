/*-------------------------------------------------------------------------
 *
 * processor_standin.c
 *	  TEMPORARY stand-in for the engine (processor.c, branch "pipeline"):
 *	  runs alipayplus_process_cancellations() in one transaction through
 *	  SPI, for APS_TXN_WORKER only.  Deleted when the engine is merged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "alipayplus_cancel.h"

void
aps_run_processor(const ApsRunOptions *opts, ApsRunCounts *counts)
{
	StringInfoData sql;
	bool		isnull;
	Datum		d;

	Assert(opts->mode == APS_TXN_WORKER);
	memset(counts, 0, sizeof(*counts));
	if (opts->poll && opts->poll(opts->poll_arg) == APS_POLL_STOP)
	{
		counts->stopped_because = "stop";
		return;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e"
					" JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
					" WHERE e.extname = 'alipayplus_cancel'", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "extension alipayplus_cancel is not created");
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT claimed, cancelled, retrying, attention, unanswered, busy, run_id"
					 " FROM %s.alipayplus_process_cancellations(" INT64_FORMAT ","
					 " pg_catalog.make_interval(secs => %d / 1000.0))",
					 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
					 opts->max_count, opts->time_budget_ms);
	pgstat_report_activity(STATE_RUNNING, sql.data);
	if (SPI_execute(sql.data, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "the processor returned no row");
	counts->claimed = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	counts->cancelled = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &isnull);
	counts->run_id = isnull ? 0 : DatumGetInt64(d);

	if (SPI_execute("SELECT min(next_attempt_at) FROM alipayplus.cancellations"
					" WHERE state = 'CANCELLING' AND NOT needs_attention",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the next due time");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	counts->next_due = isnull ? 0 : DatumGetTimestampTz(d);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	counts->stopped_because = "nothing due";
}
