/*-------------------------------------------------------------------------
 *
 * transport.c
 *	  HTTPS transport to the Alipay+ gateway with libcurl.
 *
 * Each backend keeps one curl multi handle and a pool of easy handles (one
 * per call in flight, up to alipayplus.max_concurrency) for its whole life,
 * so connections and TLS sessions are reused from call to call.  The API is
 * incremental: aps_http_add() starts a transfer on an idle handle,
 * aps_http_wait() drives them all with curl_multi_poll() for a slice of at
 * most 10 ms and marks the finished ones done, aps_http_abandon_all()
 * releases whatever is still in flight.  The caller (the pipeline of
 * processor.c, or aps_http_post_many() for a batch) looks at PostgreSQL's
 * pending-interrupt flags between slices; postmaster death is looked at
 * here.  On an interrupt every transfer in flight is abandoned and its
 * curl resources released before PostgreSQL's own error (57014 for a
 * query cancel) is raised.  No callback ever raises an error or allocates with
 * palloc's error-raising variants, so no longjmp crosses libcurl.  Each
 * call's time is capped by alipayplus.timeout_ms, its batch's deadline and
 * what is left of statement_timeout.
 *
 * Security: HTTPS only, peer and host verification always on, redirects
 * never followed, the response body capped at APS_MAX_RESPONSE_BYTES, no
 * proxy unless alipayplus.proxy names one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>

#include <curl/curl.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "alipayplus_cancel.h"

#define APS_USER_AGENT "alipayplus_cancel/1.0"

/* how long before statement_timeout a call gives up on its own */
#define APS_STATEMENT_MARGIN_MS 250

/*
 * libcurl's own timeout of a call is this much later than the call's: the
 * call's is kept by aps_http_wait after reading what came in (see there).
 * Long, because the run may be away applying answers (an order owner's
 * slow triggers) for as long as they take; libcurl's is only a backstop.
 */
#define APS_TIMEOUT_BACKSTOP_MS (10 * 60 * 1000)

/* longest slice of waiting before interrupts are looked at again */
#define APS_POLL_SLICE_MS 10

static CURLM *aps_multi = NULL;

/*
 * Easy handles, one per call in flight, kept for the backend's life so that
 * each keeps its connection and TLS session alive from call to call.
 */
static CURL *aps_pool[APS_MAX_CONCURRENCY];
static int	aps_pool_size = 0;

/*
 * Append received bytes to the exchange's buffer.  Runs inside libcurl:
 * it must not raise an error, so it allocates with MCXT_ALLOC_NO_OOM and
 * reports trouble by returning a short count, which aborts the transfer.
 */
static size_t
write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ApsHttpExchange *ex = (ApsHttpExchange *) userdata;
	size_t		n = size * nmemb;

	if (ex->response_len + n > APS_MAX_RESPONSE_BYTES)
	{
		ex->response_too_large = true;
		return 0;
	}
	if (ex->response_len + n + 1 > ex->response_cap)
	{
		size_t		newcap = Max(ex->response_cap * 2, ex->response_len + n + 1);
		char	   *newbuf;

		newcap = Max(newcap, 1024);
		newcap = Min(newcap, APS_MAX_RESPONSE_BYTES + 1);
		newbuf = MemoryContextAllocExtended(GetMemoryChunkContext(ex), newcap,
											MCXT_ALLOC_NO_OOM);
		if (newbuf == NULL)
		{
			ex->response_no_memory = true;
			return 0;
		}
		if (ex->response != NULL)
		{
			memcpy(newbuf, ex->response, ex->response_len);
			pfree(ex->response);
		}
		ex->response = newbuf;
		ex->response_cap = newcap;
	}
	memcpy(ex->response + ex->response_len, ptr, n);
	ex->response_len += n;
	ex->response[ex->response_len] = '\0';
	return n;
}

/* Create the multi handle and n easy handles on first use */
static void
ensure_handles(int n)
{
	if (aps_multi == NULL)
	{
		aps_multi = curl_multi_init();
		if (aps_multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
	}
	while (aps_pool_size < n)
	{
		CURL	   *easy = curl_easy_init();

		if (easy == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl easy handle")));
		aps_pool[aps_pool_size++] = easy;
	}
}

/*
 * Copy a response header (case-insensitive name) into palloc'd memory.  A
 * header that came more than once, also as a trailer after a chunked body,
 * is noted in the exchange: which of its values is meant cannot be told,
 * so the caller refuses the response.  A field only in a trailer is not
 * taken as the header.
 */
static char *
response_header(CURL *easy, ApsHttpExchange *ex, const char *name)
{
	struct curl_header *h = NULL;
	struct curl_header *trailer = NULL;
	size_t		amount = 0;
	char	   *value = NULL;

	if (curl_easy_header(easy, name, 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
		h != NULL && h->value != NULL)
	{
		amount = h->amount;
		value = pstrdup(h->value);
	}
	/* the same field again in a trailer (after a chunked body) counts too */
	if (curl_easy_header(easy, name, 0, CURLH_TRAILER, -1, &trailer) == CURLHE_OK &&
		trailer != NULL)
		amount += trailer->amount;
	if (amount > 1 && ex->hdr_repeated == NULL)
	{
		ex->hdr_repeated = name;
		ex->hdr_repeats = (int) Min(amount, (size_t) INT_MAX);
	}
	return value;
}

/*
 * The time a call may take: alipayplus.timeout_ms, but never longer than
 * what is left of statement_timeout (less a margin), so that a call that
 * would outlive its statement ends as local.timeout, recorded and retried
 * later, instead of cancelling the statement and taking the run with it.
 * Not for the pipeline's calls (no_statement_cap): it records a call the
 * caller's timeout ended as local.statement_timeout, never as the
 * gateway's local.timeout.
 */
static long
call_timeout_ms(ApsHttpExchange *ex)
{
	long		timeout_ms = aps_timeout_ms;

	if (ex->deadline != 0)
		timeout_ms = Min(timeout_ms,
						 Max((long) ((ex->deadline - GetCurrentTimestamp()) / 1000), 1L));

	if (StatementTimeout > 0 && !ex->no_statement_cap)
	{
		long		elapsed_ms;
		long		left_ms;

		elapsed_ms = (long) ((GetCurrentTimestamp() -
							  GetCurrentStatementStartTimestamp()) / 1000);
		left_ms = (long) StatementTimeout - elapsed_ms - APS_STATEMENT_MARGIN_MS;
		timeout_ms = Min(timeout_ms, Max(left_ms, 1L));
	}
	return timeout_ms;
}

/* Set every option of a request; returns the first failing CURLcode */
static CURLcode
set_options(CURL *easy, ApsHttpExchange *ex, struct curl_slist *headers,
			char *errbuf)
{
	CURLcode	rc = CURLE_OK;
	long		timeout_ms = call_timeout_ms(ex);

#define SETOPT(opt, val) \
	do { if (rc == CURLE_OK) rc = curl_easy_setopt(easy, opt, val); } while (0)

	SETOPT(CURLOPT_ERRORBUFFER, errbuf);
	SETOPT(CURLOPT_URL, ex->url);
	SETOPT(CURLOPT_PROTOCOLS_STR, "https");
	SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "https");
	SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(CURLOPT_NOSIGNAL, 1L);

	/*
	 * Do not wait for a pending DNS lookup when the transfer is abandoned
	 * (query cancel, terminate, timeout): libcurl's threaded resolver would
	 * otherwise join its thread in curl_multi_remove_handle(), and
	 * getaddrinfo() can take as long as the system resolver's timeouts.
	 * The thread is left to finish on its own and frees what it holds.
	 */
	SETOPT(CURLOPT_QUICK_EXIT, 1L);
	SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
	if (aps_ca_file != NULL && aps_ca_file[0] != '\0')
		SETOPT(CURLOPT_CAINFO, aps_ca_file);
	SETOPT(CURLOPT_PROXY, aps_proxy ? aps_proxy : "");
	SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long) Min(aps_connect_timeout_ms, timeout_ms));
	/* the call's own time is kept by aps_http_wait; libcurl's is a backstop */
	ex->timeout_ms = timeout_ms;
	SETOPT(CURLOPT_TIMEOUT_MS, timeout_ms + APS_TIMEOUT_BACKSTOP_MS);
	SETOPT(CURLOPT_TCP_NODELAY, 1L);
	SETOPT(CURLOPT_USERAGENT, APS_USER_AGENT);
	SETOPT(CURLOPT_POST, 1L);
	SETOPT(CURLOPT_POSTFIELDS, ex->body);
	SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) ex->body_len);
	SETOPT(CURLOPT_HTTPHEADER, headers);
	SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) APS_MAX_RESPONSE_BYTES);
	SETOPT(CURLOPT_WRITEFUNCTION, write_body);
	SETOPT(CURLOPT_WRITEDATA, ex);
#undef SETOPT
	return rc;
}

/*
 * The request headers as a curl list.  Every line is built, with exact
 * allocation, before the list is started, so that an error raised while
 * building cannot leak the list; the list itself is made by libcurl, which
 * reports failure by returning NULL instead of raising.
 */
static struct curl_slist *
request_headers(ApsHttpExchange *ex)
{
	const char *lines[5];
	struct curl_slist *list = NULL;

	lines[0] = "Content-Type: application/json; charset=UTF-8";
	lines[1] = psprintf("Client-Id: %s", ex->client_id);
	lines[2] = psprintf("Request-Time: %s", ex->request_time);
	lines[3] = psprintf("Signature: %s", ex->signature);
	lines[4] = "Expect:";			/* no "Expect: 100-continue" */

	for (size_t i = 0; i < lengthof(lines); i++)
	{
		struct curl_slist *next = curl_slist_append(list, lines[i]);

		if (next == NULL)
		{
			curl_slist_free_all(list);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory while building request headers")));
		}
		list = next;
	}
	return list;
}

/*
 * The most calls a backend can keep in flight: each holds a socket (and
 * opens the CA file while it connects), outside PostgreSQL's own count of
 * open files, so half of what the process may open is left to PostgreSQL.
 */
static int
max_in_flight(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
		return APS_MAX_CONCURRENCY;
	return (int) Max(1, Min((rlim_t) APS_MAX_CONCURRENCY, (rl.rlim_cur - 64) / 2));
}

/* Detach a finished or abandoned transfer from its easy handle */
static void
release_transfer(CURL *easy, ApsHttpExchange *ex)
{
	curl_multi_remove_handle(aps_multi, easy);
	/* the easy handle must not keep pointers into this call's memory */
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, NULL);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
	curl_slist_free_all(ex->headers);
	ex->headers = NULL;
}

/* Start exchange ex on the idle easy handle easy */
static void
start_transfer(CURL *easy, ApsHttpExchange *ex)
{
	CURLcode	rc;
	CURLMcode	mc;
	MemoryContext old;

	curl_easy_reset(easy);
	/* what the call needs lives as long as its exchange (see finish_transfer) */
	old = MemoryContextSwitchTo(GetMemoryChunkContext(ex));
	ex->errbuf = palloc0(CURL_ERROR_SIZE);
	ex->headers = request_headers(ex);
	MemoryContextSwitchTo(old);
	rc = set_options(easy, ex, ex->headers, ex->errbuf);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(easy, CURLOPT_PRIVATE, ex);
	if (rc != CURLE_OK)
	{
		curl_slist_free_all(ex->headers);
		ex->headers = NULL;
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not configure libcurl: %s",
						curl_easy_strerror(rc))));
	}
	ex->started_at = GetCurrentTimestamp();
	ex->timeout_at = ex->started_at + (TimestampTz) ex->timeout_ms * 1000;
	mc = curl_multi_add_handle(aps_multi, easy);
	if (mc != CURLM_OK)
	{
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
		curl_slist_free_all(ex->headers);
		ex->headers = NULL;
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not start the transfer: %s",
						curl_multi_strerror(mc))));
	}
	ex->easy = easy;
}

/* Fill in the outcome of a transfer that libcurl reports done */
static void
finish_transfer(CURL *easy, ApsHttpExchange *ex, CURLcode result)
{
	/*
	 * The outcome goes where the exchange is (e.g. the engine's slot), not
	 * in the current context: the transfer may finish in a wait of another
	 * call's, or between the steps of a long run
	 */
	MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(ex));

	ex->curl_code = result;
	ex->latency_ms = (double) (GetCurrentTimestamp() - ex->started_at) / 1000.0;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &ex->http_status);
	if (result != CURLE_OK)
		ex->curl_error = pstrdup(ex->errbuf[0] ? ex->errbuf :
								 curl_easy_strerror(result));
	else
	{
		ex->hdr_client_id = response_header(easy, ex, "Client-Id");
		ex->hdr_signature = response_header(easy, ex, "Signature");
		ex->hdr_response_time = response_header(easy, ex, "Response-Time");
		ex->hdr_content_encoding = response_header(easy, ex, "Content-Encoding");
	}
	ex->done = true;
	MemoryContextSwitchTo(old);
}

/*
 * The transfers in flight: the exchange each easy handle of the pool
 * carries, NULL when the handle is idle
 */
static ApsHttpExchange *aps_pool_ex[APS_MAX_CONCURRENCY];
static int	aps_in_flight = 0;
static int	aps_concurrency = 0;
static bool aps_run_open = false;	/* between aps_http_begin and _end */

/*
 * Transfer ex is over (answered, failed, or timed out here): its outcome
 * is recorded, its libcurl resources released, its handle idle again
 */
static void
complete_transfer(CURL *easy, ApsHttpExchange *ex, CURLcode result)
{
	finish_transfer(easy, ex, result);
	release_transfer(easy, ex);
	for (int h = 0; h < aps_concurrency; h++)
		if (aps_pool_ex[h] == ex)
			aps_pool_ex[h] = NULL;
	ex->easy = NULL;
	aps_in_flight--;
}

/*
 * Get ready to keep up to "want" transfers in flight; returns how many
 * can be (fewer when the process may not open that many files).
 */
int
aps_http_begin(int want)
{
	int			concurrency = Max(1, Min(want, max_in_flight()));

	/*
	 * One run at a time per session: the handles, the multi handle and the
	 * transfers in flight are the session's.  A call from inside a run (an
	 * order table owner's trigger that calls Alipay+ while the run applies
	 * an answer) would drive the run's transfers and free their memory.
	 */
	if (aps_run_open)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("this session is already calling Alipay+: a call cannot be made from inside another"),
				 errdetail("A trigger or function that runs while this session's processor run (or single call) applies an answer called alipayplus_cancel_payment, alipayplus_inquire_payment or a processor function."),
				 errhint("Queue the cancellation with alipayplus_request_cancel() instead: the processor calls Alipay+ for it.")));
	Assert(aps_in_flight == 0);
	ensure_handles(concurrency);
	aps_run_open = true;
	/* keep one connection per handle in use, also from run to run */
	curl_multi_setopt(aps_multi, CURLMOPT_MAXCONNECTS, (long) concurrency);
	aps_concurrency = concurrency;
	return concurrency;
}

/*
 * The end of a run (or a single call), on every path: every transfer
 * still in flight is abandoned, and the session may call again
 */
void
aps_http_end(void)
{
	aps_http_abandon_all();
	aps_run_open = false;
}

/* Transfers in flight now */
int
aps_http_in_flight(void)
{
	return aps_in_flight;
}

/*
 * Start exchange ex on an idle handle.  The exchange's memory must stay
 * until it is done or abandoned.  Raises an error only for local resource
 * failure, with nothing of ex left in libcurl.
 */
void
aps_http_add(ApsHttpExchange *ex)
{
	for (int h = 0; h < aps_concurrency; h++)
	{
		if (aps_pool_ex[h] != NULL)
			continue;
		start_transfer(aps_pool[h], ex);
		aps_pool_ex[h] = ex;
		aps_in_flight++;
		return;
	}
	elog(ERROR, "no idle libcurl handle for another call");
}

/*
 * Drive the transfers for at most timeout_ms (returning as soon as one
 * finishes) and mark each finished one done, its resources released.
 * Returns the number that finished.  Interrupts are not looked at here:
 * the caller does between calls, so that it can record first what it
 * must; no error is raised for them or for network trouble (in
 * ex->curl_code).  A dead postmaster abandons every transfer and ends the
 * backend.
 */
int
aps_http_wait(int timeout_ms)
{
	CURLMcode	mc;
	CURLMsg    *msg;
	int			running;
	int			left;
	int			finished = 0;
	TimestampTz now;

	if (aps_in_flight == 0)
		return 0;
	mc = curl_multi_perform(aps_multi, &running);
	if (mc == CURLM_OK && running == aps_in_flight && timeout_ms > 0)
	{
		pgstat_report_wait_start(PG_WAIT_EXTENSION);
		mc = curl_multi_poll(aps_multi, NULL, 0,
							 Min(timeout_ms, APS_POLL_SLICE_MS), NULL);
		pgstat_report_wait_end();
		if (mc == CURLM_OK)
			mc = curl_multi_perform(aps_multi, &running);
	}
	if (mc != CURLM_OK)
	{
		aps_http_abandon_all();
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("libcurl failed: %s", curl_multi_strerror(mc))));
	}

	while ((msg = curl_multi_info_read(aps_multi, &left)) != NULL)
	{
		ApsHttpExchange *ex = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &ex);
		if (ex == NULL || ex->done)
			continue;
		complete_transfer(msg->easy_handle, ex, msg->data.result);
		finished++;
	}

	/*
	 * The calls past their time, timed out here: after libcurl has read
	 * what had come in.  Its own timeout (later by APS_TIMEOUT_BACKSTOP_MS)
	 * is checked before it reads, so an answer that came in time, while
	 * the run was applying other answers and not driving libcurl, would
	 * have counted as the gateway's silence.
	 */
	now = GetCurrentTimestamp();
	for (int h = 0; h < aps_concurrency; h++)
	{
		ApsHttpExchange *ex = aps_pool_ex[h];

		if (ex == NULL || ex->done || now < ex->timeout_at)
			continue;
		snprintf(ex->errbuf, CURL_ERROR_SIZE,
				 "Operation timed out after %ld milliseconds with %zu bytes received",
				 (long) ((now - ex->started_at) / 1000), ex->response_len);
		complete_transfer((CURL *) ex->easy, ex, CURLE_OPERATION_TIMEDOUT);
		finished++;
	}

	if (!PostmasterIsAlive())
	{
		aps_http_abandon_all();
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("terminating connection because the postmaster died during an Alipay+ call")));
	}
	return finished;
}

/*
 * Abandon every transfer in flight and release its libcurl resources; its
 * exchange stays not done.  Safe to call at any time, also while an error
 * is being handled.
 */
void
aps_http_abandon_all(void)
{
	for (int h = 0; h < aps_concurrency; h++)
	{
		ApsHttpExchange *ex = aps_pool_ex[h];

		if (ex == NULL)
			continue;
		aps_pool_ex[h] = NULL;
		if (ex->easy != NULL)
			release_transfer((CURL *) ex->easy, ex);
		else if (ex->headers != NULL)
		{
			curl_slist_free_all(ex->headers);
			ex->headers = NULL;
		}
		ex->easy = NULL;
	}
	aps_in_flight = 0;
}

/* Whether a query cancel or a terminate is pending */
bool
aps_interrupt_pending(void)
{
	return QueryCancelPending || ProcDiePending;
}

/*
 * POST every exchange's body to its URL with the signed Alipay+ headers,
 * at most "concurrency" at once, and fill in the outcomes.  Each transfer
 * has its own timeouts; a finished one makes room for the next at once.
 * Network trouble is reported in ex->curl_code, never as an error; errors
 * are raised only for interrupts and local resource failure, and then
 * every transfer in flight is abandoned and its resources freed first.
 */
void
aps_http_post_many(ApsHttpExchange **exs, int n, int want)
{
	volatile int next = 0;
	volatile int concurrency;

	if (n <= 0)
		return;
	concurrency = aps_http_begin(Min(want, n));
	PG_TRY();
	{
		while (next < n || aps_in_flight > 0)
		{
			/* fill the idle handles; a call whose deadline has passed is not sent */
			while (next < n && aps_in_flight < concurrency)
			{
				if (exs[next]->deadline != 0 &&
					GetCurrentTimestamp() >= exs[next]->deadline)
				{
					exs[next]->not_sent = true;
					exs[next]->done = true;
				}
				else
					aps_http_add(exs[next]);
				next++;
			}
			if (aps_in_flight == 0)
				break;
			aps_http_wait(APS_POLL_SLICE_MS);
			if (aps_interrupt_pending())
			{
				aps_http_abandon_all();
				CHECK_FOR_INTERRUPTS();
				/* interrupts were held off by our caller: report the cancel anyway */
				ereport(ERROR,
						(errcode(ERRCODE_QUERY_CANCELED),
						 errmsg("canceling Alipay+ call because of a pending interrupt")));
			}
		}
	}
	PG_FINALLY();
	{
		aps_http_end();
	}
	PG_END_TRY();
}

/* One exchange */
void
aps_http_post(ApsHttpExchange *ex)
{
	aps_http_post_many(&ex, 1, 1);
}

/*
 * The local result code for a transport failure.  Local codes are lower
 * case and start with "local." so that they can never be mistaken for an
 * Alipay+ result code.
 */
const char *
aps_transport_failure_code(int curl_code)
{
	switch ((CURLcode) curl_code)
	{
		case CURLE_OPERATION_TIMEDOUT:
			return "local.timeout";
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_COULDNT_CONNECT:
			return "local.connect_failed";
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CIPHER:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		case CURLE_SSL_INVALIDCERTSTATUS:
		case CURLE_SSL_CRL_BADFILE:
		case CURLE_USE_SSL_FAILED:
			return "local.tls_failed";
		case CURLE_FILESIZE_EXCEEDED:
			return "local.response_too_large";
		default:
			return "local.transport_error";
	}
}
