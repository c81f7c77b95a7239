/*-------------------------------------------------------------------------
 *
 * module.c
 *	  Loading of the alipayplus_cancel library: settings and libcurl.
 *
 * The library needs no shared_preload_libraries entry; it is loaded by
 * the first call of one of its functions in a session.  Preloaded, it also
 * counts the executor nesting for the guard (guard.c), which a logical
 * replication subscriber needs, and with alipayplus.database_name set it
 * starts the background worker (worker.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "fmgr.h"

#include "alipayplus_cancel.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	CURLcode	rc;

	aps_define_settings();
	aps_guard_init();
	aps_worker_init();

	/* libcurl's global set-up is not thread-safe; do it once, here */
	rc = curl_global_init(CURL_GLOBAL_ALL);
	if (rc != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not initialize libcurl: %s",
						curl_easy_strerror(rc))));
}
