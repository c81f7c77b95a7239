/*-------------------------------------------------------------------------
 *
 * cancel.c
 *	  One signed cancelPayment call: check the id, build and sign the
 *	  request, send it, verify and classify the answer.
 *
 * alipayplus._call_cancel() is the C core under the SQL ledger functions.
 * It never writes to tables; the caller records the attempt.  Every
 * outcome that is not a verified (or, for F and U, plainly stated) answer
 * of the gateway is reported as U with a local result code:
 *
 *	local.timeout, local.connect_failed, local.tls_failed,
 *	local.transport_error, local.response_too_large, local.http_status,
 *	local.bad_response, local.bad_signature, local.client_id_mismatch,
 *	local.unsigned_success
 *
 * so a cancellation is never reported unless Alipay+ signed it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_check_ids);
PG_FUNCTION_INFO_V1(alipayplus_id_problem);
PG_FUNCTION_INFO_V1(alipayplus_call_cancel);
PG_FUNCTION_INFO_V1(alipayplus_check_config);

/* Columns of alipayplus._call_cancel's result, in order */
enum
{
	COL_SENT_FIELD,
	COL_SENT_ID,
	COL_REQUEST_TIME,
	COL_HTTP_STATUS,
	COL_RESULT_STATUS,
	COL_RESULT_CODE,
	COL_RESULT_MESSAGE,
	COL_ACQUIRER_ID,
	COL_PSP_ID,
	COL_SIGNATURE_VERIFIED,
	COL_LATENCY_MS,
	COL_ERROR_DETAIL,
	NUM_COLS
};

/*
 * What is wrong with an id, or NULL if Alipay+ can be sent it: not empty
 * or blank, no control characters, at most APS_MAX_ID_CHARS characters.
 * *sqlstate is set to the error code that fits.
 */
static char *
id_problem(const char *value, int *sqlstate)
{
	int			nchars;
	const char *p;

	*sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
	for (p = value; *p == ' '; p++)
		;
	if (*p == '\0')
		return pstrdup(value[0] ? "is blank" : "is empty");
	for (p = value; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			return psprintf("contains a control character at byte %d",
							(int) (p - value) + 1);
	nchars = pg_mbstrlen(value);
	if (nchars > APS_MAX_ID_CHARS)
	{
		*sqlstate = ERRCODE_STRING_DATA_RIGHT_TRUNCATION;
		return psprintf("is %d characters long; Alipay+ accepts at most %d",
						nchars, APS_MAX_ID_CHARS);
	}
	return NULL;
}

/* Validate one id argument; "what" names it in messages */
static void
check_id(const char *what, const char *value)
{
	int			sqlstate;
	char	   *problem = id_problem(value, &sqlstate);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("%s %s", what, problem),
				 errhint("Pass the id Alipay+ knows the payment by, without control characters, or NULL to use the other id.")));
}

/*
 * alipayplus._id_problem(id text) RETURNS text: NULL if the id can be
 * sent, else what is wrong with it.  Never raises; for ids read from
 * order rows.
 */
Datum
alipayplus_id_problem(PG_FUNCTION_ARGS)
{
	int			sqlstate;
	char	   *problem;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	problem = id_problem(text_to_cstring(PG_GETARG_TEXT_PP(0)), &sqlstate);
	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/*
 * Check the (payment_id, payment_request_id) pair given to a function:
 * exactly one must be non-NULL and valid.  Sets the JSON field name and
 * the value to send.
 */
static void
check_ids(FunctionCallInfo fcinfo, const char **field, char **value)
{
	bool		has_pid = !PG_ARGISNULL(0);
	bool		has_prid = !PG_ARGISNULL(1);

	if (has_pid == has_prid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg(has_pid ?
						"give only one of payment_id and payment_request_id, not both" :
						"either payment_id or payment_request_id must be given"),
				 errhint("Pass payment_request_id => '...' or payment_id => '...'.")));
	if (has_pid)
	{
		*field = "paymentId";
		*value = text_to_cstring(PG_GETARG_TEXT_PP(0));
		check_id("payment_id", *value);
	}
	else
	{
		*field = "paymentRequestId";
		*value = text_to_cstring(PG_GETARG_TEXT_PP(1));
		check_id("payment_request_id", *value);
	}
}

/* alipayplus._check_ids(payment_id, payment_request_id): validation only */
Datum
alipayplus_check_ids(PG_FUNCTION_ARGS)
{
	const char *field;
	char	   *value;

	check_ids(fcinfo, &field, &value);
	PG_RETURN_VOID();
}

/*
 * Check that everything a call needs is configured and the keys load;
 * raise the error a user must fix otherwise.  Returns the private key.
 */
static EVP_PKEY *
check_config(void)
{
	EVP_PKEY   *key;

	aps_require_setting("alipayplus.gateway_url", aps_gateway_url);
	aps_require_setting("alipayplus.client_id", aps_client_id);
	key = aps_private_key();
	(void) aps_public_key();
	return key;
}

/* alipayplus._check_config(): raise the configuration problem, if any */
Datum
alipayplus_check_config(PG_FUNCTION_ARGS)
{
	check_config();
	PG_RETURN_VOID();
}

/* The current time as ISO 8601 in UTC+8, e.g. 2025-01-15T10:30:00+08:00 */
static char *
request_time_now(void)
{
	pg_time_t	t = timestamptz_to_time_t(GetCurrentTimestamp()) + 8 * 3600;
	time_t		tt = (time_t) t;
	struct tm	tm;
	char		buf[64];

	gmtime_r(&tt, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S+08:00", &tm);
	return pstrdup(buf);
}

/* A verdict of our own: U with a local code */
static void
local_verdict(ApsResult *r, const char *code, const char *message)
{
	r->result_status = "U";
	r->result_code = (char *) code;
	r->result_message = (char *) message;
	r->acquirer_id = NULL;
	r->psp_id = NULL;
}

/*
 * Decide what an exchange means.  Sets *verified (NULL-able through
 * *verified_known) and *detail.
 */
static void
classify(ApsHttpExchange *ex, const char *path, ApsResult *r,
		 bool *verified, bool *verified_known, char **detail)
{
	ApsResult	parsed;
	char	   *problem = NULL;
	bool		parsed_ok;
	bool		has_sig = ex->hdr_signature != NULL;
	bool		has_time = ex->hdr_response_time != NULL;

	*verified_known = false;
	*detail = NULL;

	if (ex->curl_code != 0)
	{
		const char *code;

		if (ex->response_too_large)
			code = "local.response_too_large";
		else
			code = aps_transport_failure_code(ex->curl_code);
		local_verdict(r, code, "no answer from the gateway; the outcome is unknown");
		*detail = ex->response_too_large ?
			psprintf("response body larger than %d bytes", APS_MAX_RESPONSE_BYTES) :
			ex->curl_error;
		return;
	}

	if (ex->http_status != 200)
	{
		local_verdict(r, "local.http_status", "the gateway answered with an HTTP error; the outcome is unknown");
		*detail = psprintf("HTTP status %ld", ex->http_status);
		return;
	}

	/* a foreign Client-Id is never accepted, whether signed or not */
	if (ex->hdr_client_id != NULL && strcmp(ex->hdr_client_id, aps_client_id) != 0)
	{
		local_verdict(r, "local.client_id_mismatch", "the response is for another client id; the outcome is unknown");
		*detail = psprintf("response Client-Id \"%s\" differs from alipayplus.client_id \"%s\"",
						   ex->hdr_client_id, aps_client_id);
		return;
	}

	parsed_ok = aps_parse_result(ex->response, ex->response_len, &parsed, &problem);

	if (has_sig && has_time)
	{
		char	   *content;
		size_t		content_len;

		content = aps_content_to_sign(path, aps_client_id, ex->hdr_response_time,
									  ex->response ? ex->response : "",
									  ex->response_len, &content_len);
		*verified_known = true;
		*verified = aps_verify_signature(aps_public_key(), content,
										 content_len, ex->hdr_signature);
		if (!*verified)
		{
			local_verdict(r, "local.bad_signature", "the response signature did not verify; the outcome is unknown");
			*detail = parsed_ok ?
				psprintf("unverified response claimed %s %s",
						 parsed.result_status, parsed.result_code) :
				"unverified response";
			return;
		}
	}
	else if (has_sig || has_time)
	{
		local_verdict(r, "local.bad_signature", "the response is only partly signed; the outcome is unknown");
		*detail = has_sig ? "response has a Signature header but no Response-Time" :
			"response has a Response-Time header but no Signature";
		return;
	}

	if (!parsed_ok)
	{
		local_verdict(r, "local.bad_response", "the response is not a cancelPayment result; the outcome is unknown");
		*detail = problem;
		return;
	}

	if (!*verified_known && parsed.result_status[0] == 'S')
	{
		local_verdict(r, "local.unsigned_success", "an unsigned response claimed success; the outcome is unknown");
		*detail = psprintf("unsigned response claimed S %s", parsed.result_code);
		return;
	}

	*r = parsed;
}

/*
 * alipayplus._call_cancel(payment_id, payment_request_id): one signed
 * cancelPayment call.  Returns what was sent and what it means.
 */
Datum
alipayplus_call_cancel(PG_FUNCTION_ARGS)
{
	const char *field;
	char	   *value;
	char	   *body;
	char	   *url;
	char	   *request_time;
	char	   *content;
	size_t		content_len;
	ApsHttpExchange ex;
	ApsResult	r;
	bool		verified = false;
	bool		verified_known = false;
	char	   *detail;
	TupleDesc	tupdesc;
	Datum		values[NUM_COLS];
	bool		nulls[NUM_COLS];
	size_t		baselen;
	EVP_PKEY   *key;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));

	check_ids(fcinfo, &field, &value);
	key = check_config();

	body = aps_cancel_body(field, value);
	request_time = request_time_now();
	content = aps_content_to_sign(aps_cancel_path, aps_client_id, request_time,
								  body, strlen(body), &content_len);

	baselen = strlen(aps_gateway_url);
	if (baselen > 0 && aps_gateway_url[baselen - 1] == '/')
		baselen--;
	url = psprintf("%.*s%s", (int) baselen, aps_gateway_url, aps_cancel_path);

	memset(&ex, 0, sizeof(ex));
	ex.url = url;
	ex.body = body;
	ex.body_len = strlen(body);
	ex.client_id = aps_client_id;
	ex.request_time = request_time;
	ex.signature = aps_signature_header(aps_sign(key, content, content_len));
	aps_http_post(&ex);

	classify(&ex, aps_cancel_path, &r, &verified, &verified_known, &detail);

	memset(nulls, 0, sizeof(nulls));
	values[COL_SENT_FIELD] = CStringGetTextDatum(field);
	values[COL_SENT_ID] = CStringGetTextDatum(value);
	values[COL_REQUEST_TIME] = CStringGetTextDatum(request_time);
	values[COL_HTTP_STATUS] = Int32GetDatum((int32) ex.http_status);
	nulls[COL_HTTP_STATUS] = ex.http_status == 0;
	values[COL_RESULT_STATUS] = CStringGetTextDatum(r.result_status);

	/*
	 * Everything else may hold text from the network (response body and
	 * headers, libcurl's messages): made valid in the database encoding,
	 * with control characters escaped and the length capped.
	 */
#define NETWORK_TEXT_OR_NULL(col, s) \
	do { \
		if ((s) != NULL) \
			values[col] = CStringGetTextDatum(aps_network_text((s), strlen(s))); \
		else \
			nulls[col] = true; \
	} while (0)
	NETWORK_TEXT_OR_NULL(COL_RESULT_CODE, r.result_code);
	NETWORK_TEXT_OR_NULL(COL_RESULT_MESSAGE, r.result_message);
	NETWORK_TEXT_OR_NULL(COL_ACQUIRER_ID, r.acquirer_id);
	NETWORK_TEXT_OR_NULL(COL_PSP_ID, r.psp_id);
	NETWORK_TEXT_OR_NULL(COL_ERROR_DETAIL, detail);
#undef NETWORK_TEXT_OR_NULL
	values[COL_SIGNATURE_VERIFIED] = BoolGetDatum(verified);
	nulls[COL_SIGNATURE_VERIFIED] = !verified_known;
	values[COL_LATENCY_MS] = Float8GetDatum(ex.latency_ms);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}
