/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background worker that serves the queue of one database, woken by
 *	  the commits that queue a cancellation.
 *
 * With alipayplus_cancel in shared_preload_libraries and
 * alipayplus.database_name naming a database, the postmaster starts a
 * launcher ("alipayplus_cancel launcher"), connected to no database, once
 * the server accepts writes (never on a hot standby: it starts when the
 * standby is promoted).  The launcher looks the database up by name and
 * starts the worker ("alipayplus_cancel worker"), connected to that
 * database by OID; when the worker exits it starts it again after a short
 * delay.  (A launcher that was terminated is started again by the
 * postmaster after 5 s; the worker it then starts takes over from the one
 * still running, which stops.)  While the database does not exist (not
 * yet created, dropped, renamed) the launcher waits, with one LOG line,
 * and looks again every few seconds.
 *
 * The worker runs the processor's engine (aps_run_processor, APS_TXN_WORKER
 * mode: the same claims, calls and ledger rules as
 * alipayplus_run_cancellations), then sleeps until the next row comes due
 * (at most APS_WORKER_MAX_SLEEP_MS), or until its latch is set:
 *	- by a transaction that made a row due, when it commits: the trigger
 *	  alipayplus._wake_worker() on alipayplus.cancellations notes it, and
 *	  an XACT_EVENT_COMMIT callback sets the worker's latch.  A transaction
 *	  that rolls back wakes nobody.  CREATE, ALTER and DROP EXTENSION wake
 *	  it too.
 *	- by SIGHUP: the run in progress claims nothing more, settles the calls
 *	  in flight as they are answered, and ends ('configuration reloaded');
 *	  the configuration is re-read before the next run, which follows at
 *	  once.  And by SIGTERM (the engine stops, what has come in is
 *	  settled, the worker exits).
 * An ERROR inside a run is logged, the transaction aborted, and the worker
 * backs off (1 s, doubling up to 60 s) and goes on.  With the extension not
 * (or no longer) created in the database it waits quietly: one LOG line,
 * then a look every APS_WORKER_MAX_SLEEP_MS or at a wake-up.
 *
 * DROP DATABASE, ALTER DATABASE RENAME and ALTER DATABASE SET TABLESPACE
 * refuse to run while another session is connected to the database.  So a
 * ProcessUtility hook (every backend has the preloaded library) asks the
 * worker to leave, and the launcher to start none for
 * APS_WORKER_LEAVE_PAUSE_MS, when the database's owner runs one of them on
 * the worker's database and the command will run (top level, outside a
 * transaction block, with the rights it needs); PostgreSQL waits up to 5 s
 * for the worker to go.  A database that does not allow connections
 * (ALLOW_CONNECTIONS false) is waited for, with one LOG line.  The worker
 * does not take default_transaction_read_only from its database.
 *
 * Shared memory (one ApsWorkerShared) is requested through PG15's
 * shmem_request_hook; it exists only when the library is preloaded, and
 * everything here is a no-op without it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "alipayplus_cancel.h"

/* The longest the worker sleeps without a look at the queue */
#define APS_WORKER_MAX_SLEEP_MS		30000
/* The shortest sleep after a run that claimed nothing though a row is due */
#define APS_WORKER_BUSY_NAP_MS		1000
/* Backoff after an ERROR in a run: first, and longest */
#define APS_WORKER_ERROR_NAP_MS		1000
#define APS_WORKER_ERROR_NAP_MAX_MS	60000
/* A worker run claims at most this many rows and lasts at most this long */
#define APS_WORKER_RUN_MAX_COUNT	100000
#define APS_WORKER_RUN_BUDGET_MS	60000
/* The launcher: delay before a worker that exited is started again */
#define APS_WORKER_RESTART_MS		1000
/* The launcher: how often it looks for the database while it is missing */
#define APS_WORKER_DB_LOOK_MS		2000
/* No worker for this long after it was asked to leave its database */
#define APS_WORKER_LEAVE_PAUSE_MS	10000

typedef struct ApsWorkerShared
{
	slock_t		mutex;
	uint64		generation;		/* bumped by every launcher start */
	PGPROC	   *worker;			/* the running worker, NULL if none */
	Oid			dboid;			/* and its database */
	Oid			target;			/* the database the launcher last started a
								 * worker for */
	bool		leave;			/* the worker is asked to leave */
	TimestampTz pause_until;	/* the launcher starts no worker before */
} ApsWorkerShared;

static ApsWorkerShared *aps_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* this backend is the worker */
static bool am_worker = false;
/* this transaction made a row due: wake the worker when it commits */
static bool wake_at_commit = false;

PGDLLEXPORT void aps_launcher_main(Datum main_arg);
PGDLLEXPORT void aps_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(alipayplus_wake_worker);

static void
aps_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(ApsWorkerShared)));
}

static void
aps_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	aps_shared = ShmemInitStruct("alipayplus_cancel worker",
								 sizeof(ApsWorkerShared), &found);
	if (!found)
	{
		memset(aps_shared, 0, sizeof(ApsWorkerShared));
		SpinLockInit(&aps_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Set the worker's latch, if a worker serves this backend's database.
 */
static void
wake_worker(void)
{
	PGPROC	   *proc;

	if (aps_shared == NULL || am_worker)
		return;
	SpinLockAcquire(&aps_shared->mutex);
	proc = aps_shared->dboid == MyDatabaseId ? aps_shared->worker : NULL;
	SpinLockRelease(&aps_shared->mutex);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

static void
wake_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (wake_at_commit)
			{
				wake_at_commit = false;
				wake_worker();
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction is found by the worker's timer */
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

/*
 * alipayplus._wake_worker(): trigger on alipayplus.cancellations, fired
 * for each row that is (again) due for a call; the worker is woken when
 * the transaction commits.
 */
Datum
alipayplus_wake_worker(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("alipayplus._wake_worker() must be called as a trigger")));
	if (aps_shared != NULL && !am_worker)
		wake_at_commit = true;
	return PointerGetDatum(NULL);
}

/* Whether the current role may create databases (RENAME needs it) */
static bool
may_create_databases(void)
{
	HeapTuple	tup;
	bool		createdb;

	if (superuser())
		return true;
	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(GetUserId()));
	if (!HeapTupleIsValid(tup))
		return false;
	createdb = ((Form_pg_authid) GETSTRUCT(tup))->rolcreatedb;
	ReleaseSysCache(tup);
	return createdb;
}

/*
 * The database owner runs DROP DATABASE, ALTER DATABASE RENAME or SET
 * TABLESPACE on the worker's database: ask the worker to leave, and the
 * launcher to start none for a while, so that the command does not fail
 * with "database is being accessed by other users".
 */
static void
ask_worker_to_leave(const char *dbname, bool needs_createdb)
{
	Oid			dboid;
	PGPROC	   *proc = NULL;

	if (aps_shared == NULL || dbname == NULL)
		return;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || !pg_database_ownercheck(dboid, GetUserId()))
		return;
	if (needs_createdb && !may_create_databases())
		return;
	SpinLockAcquire(&aps_shared->mutex);
	if (aps_shared->target == dboid)
	{
		/* also when the worker is between two lives */
		aps_shared->pause_until =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										APS_WORKER_LEAVE_PAUSE_MS);
		if (aps_shared->dboid == dboid && aps_shared->worker != NULL)
		{
			aps_shared->leave = true;
			proc = aps_shared->worker;
		}
	}
	SpinLockRelease(&aps_shared->mutex);
	if (proc != NULL)
	{
		ereport(LOG,
				(errmsg("alipayplus_cancel worker asked to leave database \"%s\"",
						dbname)));
		SetLatch(&proc->procLatch);
	}
}

static void
aps_process_utility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		extension = false;

	/*
	 * DROP DATABASE and SET TABLESPACE run only as a statement of their own
	 * (PreventInTransactionBlock): any other time they fail, and the worker
	 * stays.  RENAME runs anywhere, but needs CREATEDB too.
	 */
	bool		alone = context == PROCESS_UTILITY_TOPLEVEL &&
		!IsTransactionBlock() && !IsSubTransaction();

	if (IsA(parsetree, DropdbStmt))
	{
		if (alone)
			ask_worker_to_leave(((DropdbStmt *) parsetree)->dbname, false);
	}
	else if (IsA(parsetree, RenameStmt) &&
			 ((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
		ask_worker_to_leave(((RenameStmt *) parsetree)->subname, true);
	else if (IsA(parsetree, AlterDatabaseStmt))
	{
		AlterDatabaseStmt *stmt = (AlterDatabaseStmt *) parsetree;
		ListCell   *lc;

		foreach(lc, stmt->options)
		{
			if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0 &&
				alone)
				ask_worker_to_leave(stmt->dbname, false);
		}
	}
	else if (IsA(parsetree, CreateExtensionStmt) ||
			 IsA(parsetree, AlterExtensionStmt) ||
			 (IsA(parsetree, DropStmt) &&
			  ((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION))
		extension = true;

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	/* the worker looks at the extension again after the commit */
	if (extension && aps_shared != NULL)
		wake_at_commit = true;
}

/*
 * The launcher or the worker ("launcher", "worker": its bgw_type is
 * "alipayplus_cancel KIND", its function aps_KIND_main).  Neither ever
 * starts on a hot standby: the postmaster starts them at promotion.
 */
static void
describe_worker(BackgroundWorker *bgw, const char *kind, const char *name,
				int restart_time)
{
	memset(bgw, 0, sizeof(*bgw));
	bgw->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw->bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw->bgw_restart_time = restart_time;
	snprintf(bgw->bgw_library_name, BGW_MAXLEN, "alipayplus_cancel");
	snprintf(bgw->bgw_function_name, BGW_MAXLEN, "aps_%s_main", kind);
	snprintf(bgw->bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(bgw->bgw_type, BGW_MAXLEN, "alipayplus_cancel %s", kind);
}

/*
 * From _PG_init: with the library in shared_preload_libraries, shared
 * memory, the hooks, and the launcher when alipayplus.database_name is set.
 */
void
aps_worker_init(void)
{
	BackgroundWorker bgw;

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = aps_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = aps_shmem_startup;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = aps_process_utility;
	RegisterXactCallback(wake_xact_callback, NULL);

	if (aps_database_name == NULL || aps_database_name[0] == '\0')
		return;

	describe_worker(&bgw, "launcher", "alipayplus_cancel launcher", 5);
	RegisterBackgroundWorker(&bgw);
}

/* Wait for the latch, a timeout, or postmaster death (which exits) */
static void
nap(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

static void
reload_config_if_asked(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* ----------------------------------------------------------------------
 * The launcher
 * ---------------------------------------------------------------------- */

static Oid
database_by_name(const char *name, bool *allowconn)
{
	Oid			dboid;

	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	/*
	 * A heap scan: without a database, the launcher cannot use the index
	 * that get_database_oid() reads (autovacuum's launcher does the same).
	 */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	dboid = InvalidOid;
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), name) == 0)
		{
			dboid = db->oid;
			*allowconn = db->datallowconn;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return dboid;
}

void
aps_launcher_main(Datum main_arg)
{
	BackgroundWorkerHandle *handle = NULL;
	TimestampTz not_before = 0;
	uint64		generation;
	bool		said_missing = false;
	bool		said_no_slot = false;
	bool		said_no_connections = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	/* connected to no database: it can read pg_database, and blocks no DROP */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	SpinLockAcquire(&aps_shared->mutex);
	generation = ++aps_shared->generation;
	SpinLockRelease(&aps_shared->mutex);

	ereport(LOG,
			(errmsg("alipayplus_cancel launcher started for database \"%s\"",
					aps_database_name)));

	for (;;)
	{
		TimestampTz now;
		TimestampTz pause;
		Oid			dboid;
		bool		allowconn = false;
		BackgroundWorker bgw;
		char		name[BGW_MAXLEN];

		if (ShutdownRequestPending)
		{
			/* exit code 1: the postmaster starts the launcher again */
			proc_exit(1);
		}
		reload_config_if_asked();
		now = GetCurrentTimestamp();

		if (handle != NULL)
		{
			pid_t		pid;
			BgwHandleStatus status = GetBackgroundWorkerPid(handle, &pid);

			if (status == BGWH_STARTED || status == BGWH_NOT_YET_STARTED)
			{
				/* the postmaster's SIGUSR1 sets our latch when it exits */
				nap(APS_WORKER_MAX_SLEEP_MS);
				continue;
			}
			pfree(handle);
			handle = NULL;
			not_before = TimestampTzPlusMilliseconds(now, APS_WORKER_RESTART_MS);
		}

		SpinLockAcquire(&aps_shared->mutex);
		pause = aps_shared->pause_until;
		SpinLockRelease(&aps_shared->mutex);
		if (pause > not_before)
			not_before = pause;
		if (now < not_before)
		{
			nap(TimestampDifferenceMilliseconds(now, not_before));
			continue;
		}

		dboid = database_by_name(aps_database_name, &allowconn);
		if (!OidIsValid(dboid))
		{
			if (!said_missing)
				ereport(LOG,
						(errmsg("alipayplus_cancel worker waits for database \"%s\", which does not exist",
								aps_database_name),
						 errhint("Create the database, or set alipayplus.database_name to an existing one and restart the server.")));
			said_missing = true;
			nap(APS_WORKER_DB_LOOK_MS);
			continue;
		}
		if (said_missing)
			ereport(LOG,
					(errmsg("alipayplus_cancel found database \"%s\"; starting the worker",
							aps_database_name)));
		said_missing = false;

		/* a worker would fail to connect (FATAL) at every try */
		if (!allowconn)
		{
			if (!said_no_connections)
				ereport(LOG,
						(errmsg("alipayplus_cancel worker waits: database \"%s\" does not allow connections",
								aps_database_name),
						 errhint("ALTER DATABASE %s ALLOW_CONNECTIONS true; the worker starts within %d s.",
								 quote_identifier(aps_database_name),
								 APS_WORKER_DB_LOOK_MS / 1000)));
			said_no_connections = true;
			nap(APS_WORKER_DB_LOOK_MS);
			continue;
		}
		if (said_no_connections)
			ereport(LOG,
					(errmsg("alipayplus_cancel: database \"%s\" allows connections again; starting the worker",
							aps_database_name)));
		said_no_connections = false;

		snprintf(name, sizeof(name), "alipayplus_cancel worker for database %s",
				 aps_database_name);
		describe_worker(&bgw, "worker", name, BGW_NEVER_RESTART);
		bgw.bgw_main_arg = ObjectIdGetDatum(dboid);
		memcpy(bgw.bgw_extra, &generation, sizeof(generation));
		bgw.bgw_notify_pid = MyProcPid;
		SpinLockAcquire(&aps_shared->mutex);
		aps_shared->target = dboid;
		SpinLockRelease(&aps_shared->mutex);
		if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
		{
			handle = NULL;
			if (!said_no_slot)
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("alipayplus_cancel could not start its worker: no background worker slot is free"),
						 errhint("Raise max_worker_processes.")));
			said_no_slot = true;
			nap(APS_WORKER_MAX_SLEEP_MS);
			continue;
		}
		said_no_slot = false;
	}
}

/* ----------------------------------------------------------------------
 * The worker
 * ---------------------------------------------------------------------- */

static bool
asked_to_leave(void)
{
	bool		leave;

	SpinLockAcquire(&aps_shared->mutex);
	leave = aps_shared->leave && aps_shared->worker == MyProc;
	SpinLockRelease(&aps_shared->mutex);
	return leave;
}

/* A worker started by a newer launcher has taken over (see the launcher) */
static bool
superseded(void)
{
	bool		other;

	SpinLockAcquire(&aps_shared->mutex);
	other = aps_shared->worker != MyProc;
	SpinLockRelease(&aps_shared->mutex);
	return other;
}

static void
worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&aps_shared->mutex);
	if (aps_shared->worker == MyProc)
	{
		aps_shared->worker = NULL;
		aps_shared->dboid = InvalidOid;
		aps_shared->leave = false;
	}
	SpinLockRelease(&aps_shared->mutex);
}

/* The engine's poll, between its waits */
static ApsPollVerdict
worker_poll(void *arg)
{
	if (ShutdownRequestPending || asked_to_leave() || superseded())
		return APS_POLL_STOP;
	/* new settings: end this run, the next one reads them */
	if (ConfigReloadPending)
		return APS_POLL_DRAIN;
	if (MyLatch->is_set)
	{
		ResetLatch(MyLatch);
		if (ShutdownRequestPending || asked_to_leave() || superseded())
			return APS_POLL_STOP;
		return APS_POLL_LOOK_FOR_WORK;
	}
	return APS_POLL_GO_ON;
}

/* Is the extension created in this database? */
static bool
extension_present(void)
{
	bool		present;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = OidIsValid(get_extension_oid("alipayplus_cancel", true));
	CommitTransactionCommand();
	return present;
}

/*
 * One run of the engine; false after an ERROR, which is logged, and whose
 * transaction is aborted.
 */
static bool
run_engine(const ApsRunOptions *opts, ApsRunCounts *counts)
{
	volatile bool ok = true;

	PG_TRY();
	{
		aps_run_processor(opts, counts);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		FlushErrorState();
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

void
aps_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	uint64		generation;
	PGPROC	   *previous;
	MemoryContext loop_cxt;
	long		error_nap = 0;
	bool		said_no_extension = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	am_worker = true;

	/*
	 * A database's default_transaction_read_only is for its sessions; the
	 * worker's own transactions must write the ledger, or it would fail at
	 * every run
	 */
	if (DefaultXactReadOnly)
		ereport(LOG,
				(errmsg("alipayplus_cancel worker ignores default_transaction_read_only = on of its database")));
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET,
					PGC_S_OVERRIDE);

	memcpy(&generation, MyBgworkerEntry->bgw_extra, sizeof(generation));
	SpinLockAcquire(&aps_shared->mutex);
	if (aps_shared->generation != generation)
	{
		/* started by a launcher that has since been restarted */
		SpinLockRelease(&aps_shared->mutex);
		proc_exit(0);
	}
	previous = aps_shared->worker;
	aps_shared->worker = MyProc;
	aps_shared->dboid = dboid;
	aps_shared->leave = false;
	SpinLockRelease(&aps_shared->mutex);
	/* a worker of the launcher's previous life stops when it sees this */
	if (previous != NULL)
		SetLatch(&previous->procLatch);
	before_shmem_exit(worker_detach, (Datum) 0);

	ereport(LOG,
			(errmsg("alipayplus_cancel worker started for database \"%s\"",
					aps_database_name)));
	pgstat_report_activity(STATE_IDLE, NULL);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "alipayplus worker",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		ApsRunOptions opts;
		ApsRunCounts counts;
		long		sleep_ms = APS_WORKER_MAX_SLEEP_MS;
		bool		failed = false;

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
		{
			ereport(LOG,
					(errmsg("alipayplus_cancel worker stops: it was asked to terminate")));
			break;
		}
		if (superseded())
		{
			/* its launcher was restarted and started another worker */
			ereport(LOG,
					(errmsg("alipayplus_cancel worker stops: another worker has taken over")));
			break;
		}
		if (asked_to_leave())
		{
			ereport(LOG,
					(errmsg("alipayplus_cancel worker leaves its database, which is being dropped, renamed or moved")));
			break;
		}
		reload_config_if_asked();

		/* latch set from here on means: look again after this run */
		ResetLatch(MyLatch);

		if (!extension_present())
		{
			if (!said_no_extension)
				ereport(LOG,
						(errmsg("alipayplus_cancel worker waits: extension \"alipayplus_cancel\" is not created in this database"),
						 errhint("Run CREATE EXTENSION alipayplus_cancel in it; the worker starts serving at once.")));
			said_no_extension = true;
			nap(APS_WORKER_MAX_SLEEP_MS);
			continue;
		}
		if (said_no_extension)
			ereport(LOG,
					(errmsg("alipayplus_cancel worker found the extension; serving the queue")));
		said_no_extension = false;

		memset(&opts, 0, sizeof(opts));
		memset(&counts, 0, sizeof(counts));
		opts.mode = APS_TXN_WORKER;
		opts.max_count = APS_WORKER_RUN_MAX_COUNT;
		opts.time_budget_ms = APS_WORKER_RUN_BUDGET_MS;
		opts.caller = "alipayplus_cancel worker";
		opts.poll = worker_poll;
		opts.poll_arg = NULL;

		pgstat_report_activity(STATE_RUNNING, "alipayplus_cancel worker: serving the queue");
		failed = !run_engine(&opts, &counts);
		MemoryContextSwitchTo(loop_cxt);
		pgstat_report_activity(STATE_IDLE, NULL);

		if (failed)
		{
			error_nap = error_nap == 0 ? APS_WORKER_ERROR_NAP_MS :
				Min(error_nap * 2, APS_WORKER_ERROR_NAP_MAX_MS);
			ereport(LOG,
					(errmsg("alipayplus_cancel worker retries in %ld ms", error_nap)));
			sleep_ms = error_nap;
		}
		else
		{
			error_nap = 0;
			if (counts.next_due != 0)
			{
				TimestampTz now = GetCurrentTimestamp();

				sleep_ms = (counts.next_due <= now) ? 0 :
					TimestampDifferenceMilliseconds(now, counts.next_due);
				/* a due row it could not claim (its order busy): not in a loop */
				if (counts.claimed == 0 && sleep_ms < APS_WORKER_BUSY_NAP_MS)
					sleep_ms = APS_WORKER_BUSY_NAP_MS;
				sleep_ms = Min(sleep_ms, APS_WORKER_MAX_SLEEP_MS);
			}
		}
		if (ShutdownRequestPending || asked_to_leave() || superseded())
			continue;
		if (sleep_ms > 0)
		{
			/* what the run wrote, counted before the worker sleeps (see step_end) */
			pgstat_report_stat(true);
			nap(sleep_ms);
		}
	}
	proc_exit(0);
}
