/*-------------------------------------------------------------------------
 *
 * processor.c
 *	  The claim-then-call pipeline that every processor form runs: claim due
 *	  rows in a short committed transaction, call them through one curl
 *	  multi handle, settle each answer as it arrives and refill its slot.
 *
 *-------------------------------------------------------------------------
 */
#include "alipayplus_cancel.h"

void
aps_run_processor(const ApsRunOptions *opts, ApsRunCounts *counts)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("the alipayplus_cancel pipeline is not built yet")));
}
