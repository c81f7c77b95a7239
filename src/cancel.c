/*-------------------------------------------------------------------------
 *
 * cancel.c
 *	  One signed call of an Alipay+ API, cancelPayment or inquiryPayment:
 *	  check the id, build and sign the request, send it, verify and
 *	  classify the answer.  The two APIs are two operations (ApsOperation)
 *	  of this one call path: only the path setting, the name in messages and
 *	  the payment's fields of an inquiry's answer differ.
 *
 * alipayplus._call_cancel() is the C core under the SQL ledger functions,
 * alipayplus._call_inquiry() the one under alipayplus_inquire_payment().
 * Neither writes to tables; the caller records the attempt or inquiry.
 * Every outcome that is not a verified (or, for F and U, plainly stated)
 * answer of the gateway is reported as U with a local result code:
 *
 *	local.timeout, local.connect_failed, local.tls_failed,
 *	local.transport_error, local.response_too_large, local.http_status,
 *	local.bad_response, local.bad_signature, local.client_id_mismatch,
 *	local.unsigned_success
 *
 * so a cancellation (or a payment's result) is never reported unless
 * Alipay+ signed it.  An answer that could be read more than one way (a
 * Signature, Response-Time or Client-Id header given twice, a
 * Response-Time that is not a time, a body in a Content-Encoding that was
 * never asked for) is not taken either; nor is an inquiry's answer about
 * another payment than the one asked about, or one whose payment fields
 * are malformed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_check_ids);
PG_FUNCTION_INFO_V1(alipayplus_id_problem);
PG_FUNCTION_INFO_V1(alipayplus_call_cancel);
PG_FUNCTION_INFO_V1(alipayplus_call_cancel_many);
PG_FUNCTION_INFO_V1(alipayplus_call_inquiry);
PG_FUNCTION_INFO_V1(alipayplus_check_config);
PG_FUNCTION_INFO_V1(alipayplus_refuse_read_only);
PG_FUNCTION_INFO_V1(alipayplus_refuse_read_only_to);

/* The two operations of the call path */
const ApsOperation aps_cancel_operation = {
	"cancelPayment", &aps_cancel_path, false,
	"the response is not a cancelPayment result; the outcome is unknown"
};
const ApsOperation aps_inquiry_operation = {
	"inquiryPayment", &aps_inquiry_path, true,
	"the response is not an inquiryPayment result; the outcome is unknown"
};

/* The columns of alipayplus._call_cancel's result, in order */
const ApsCallColumn aps_call_columns[APS_CALL_NUM_COLS] = {
	{"sent_field", TEXTOID},
	{"sent_id", TEXTOID},
	{"request_time", TEXTOID},
	{"http_status", INT4OID},
	{"result_status", TEXTOID},
	{"result_code", TEXTOID},
	{"result_message", TEXTOID},
	{"acquirer_id", TEXTOID},
	{"psp_id", TEXTOID},
	{"signature_verified", BOOLOID},
	{"latency_ms", FLOAT8OID},
	{"error_detail", TEXTOID}
};

static EVP_PKEY *check_settings(void);

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
 * exactly one must be non-NULL and valid.
 */
void
aps_check_id_pair(const char *payment_id, const char *request_id)
{
	if ((payment_id != NULL) == (request_id != NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg(payment_id != NULL ?
						"give only one of payment_id and payment_request_id, not both" :
						"either payment_id or payment_request_id must be given"),
				 errhint("Pass payment_request_id => '...' or payment_id => '...'.")));
	if (payment_id != NULL)
		check_id("payment_id", payment_id);
	else
		check_id("payment_request_id", request_id);
}

/* The same for a function's first two arguments; sets the field and value to send */
static void
check_ids(FunctionCallInfo fcinfo, const char **field, char **value)
{
	char	   *pid = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *prid = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));

	aps_check_id_pair(pid, prid);
	*field = pid ? "paymentId" : "paymentRequestId";
	*value = pid ? pid : prid;
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
 * Refuse, before anything else, to send or queue a cancellation from a
 * transaction that cannot write: a server in recovery (a hot standby) or a
 * read-only transaction.  A call sent from there could never be recorded,
 * so Alipay+ might cancel a payment that the ledger does not know of.
 * Every path that sends or queues a request calls this first; it does not
 * rely on the first write or row lock failing.
 */
void
aps_refuse_read_only(void)
{
	aps_refuse_read_only_to("cancel Alipay+ payments");
}

/*
 * The same refusal for another action ("inquire about Alipay+ payments"):
 * an inquiry is recorded too, so it is not sent where it could not be.
 */
void
aps_refuse_read_only_to(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s in a read-only transaction", what),
				 errdetail("The server is a standby (in recovery): the ledger cannot be written here."),
				 errhint("Run on the primary.")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s in a read-only transaction", what),
				 errhint("Run it in a read-write transaction.")));
}

/* alipayplus._refuse_read_only(): see aps_refuse_read_only() */
Datum
alipayplus_refuse_read_only(PG_FUNCTION_ARGS)
{
	aps_refuse_read_only();
	PG_RETURN_VOID();
}

/*
 * alipayplus._refuse_read_only_to(what text): the same refusal for another
 * action, "cannot <what> in a read-only transaction"
 */
Datum
alipayplus_refuse_read_only_to(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("what must not be null")));
	aps_refuse_read_only_to(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * Whether a WAL sender of this server is streaming: a standby (or a
 * logical subscriber) that may be behind, as pg_stat_replication shows.
 */
static bool
walsender_streaming(void)
{
	if (WalSndCtl == NULL)
		return false;
	for (int i = 0; i < max_wal_senders; i++)
	{
		WalSnd	   *walsnd = &WalSndCtl->walsnds[i];
		bool		streaming;

		SpinLockAcquire(&walsnd->mutex);
		streaming = walsnd->pid != 0 && walsnd->state == WALSNDSTATE_STREAMING;
		SpinLockRelease(&walsnd->mutex);
		if (streaming)
			return true;
	}
	return false;
}

/*
 * aps_warn_durability(): once per session, a WARNING when this session's
 * commits may be lost although they were acknowledged: synchronous_commit
 * off; local or remote_write while synchronous standbys are configured (a
 * failover to a standby that had not written, or flushed, them); or, with
 * no synchronous standby configured, while this server streams to a
 * standby, which a failover promotes without the commits it had not
 * received yet.  A lost commit puts a CANCELLED row back to CANCELLING
 * (sent again, with the same id) or forgets a queued request altogether.
 * Cancellations go on: refusing them could let payments run past their
 * cancel window.  Cheap: settings, and at most max_wal_senders spinlocks,
 * until it warned.
 */
void
aps_warn_durability(void)
{
	static bool warned = false;
	bool		sync_names = SyncRepStandbyNames != NULL &&
		SyncRepStandbyNames[0] != '\0';
	const char *detail = "A lost CANCELLED is sent to Alipay+ again with the same id; a lost cancel request is never sent.";

	if (warned)
		return;
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("synchronous_commit is off: cancellations this session commits can be lost in a crash after they were reported"),
				 errdetail_internal("%s", detail),
				 errhint("Run alipayplus_cancel with synchronous_commit = on (ALTER ROLE ... SET synchronous_commit = on); see \"High availability\" in the README.")));
	else if ((synchronous_commit == SYNCHRONOUS_COMMIT_LOCAL_FLUSH ||
			  synchronous_commit == SYNCHRONOUS_COMMIT_REMOTE_WRITE) && sync_names)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("synchronous_commit is %s although synchronous_standby_names is set: cancellations this session commits can be lost at a failover",
						synchronous_commit == SYNCHRONOUS_COMMIT_LOCAL_FLUSH ?
						"local" : "remote_write"),
				 errdetail_internal("%s", detail),
				 errhint("Run alipayplus_cancel with synchronous_commit = on or remote_apply (ALTER ROLE ... SET synchronous_commit = on); see \"High availability\" in the README.")));
	else if (!sync_names && walsender_streaming())
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("this server streams its WAL asynchronously (synchronous_standby_names is empty): cancellations this session commits can be lost at a failover"),
				 errdetail_internal("A standby promoted before it received a commit does not have it. %s", detail),
				 errhint("Make the standby synchronous (synchronous_standby_names) and run alipayplus_cancel with synchronous_commit = on or remote_apply, or fail over only after the standby caught up; see \"High availability\" in the README.")));
	else
		return;
	warned = true;
}

/*
 * Check that this transaction may write (aps_refuse_read_only), that
 * everything a call needs is configured and that the keys load; raise the
 * error a user must fix otherwise.  Returns the private key.
 */
EVP_PKEY *
aps_check_config(void)
{
	aps_refuse_read_only();
	aps_warn_durability();
	return check_settings();
}

/* The settings and keys every call needs; returns the private key */
static EVP_PKEY *
check_settings(void)
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
	aps_check_config();
	PG_RETURN_VOID();
}

/* The current time as ISO 8601 in UTC+8, e.g. 2025-01-15T10:30:00+08:00 */
char *
aps_request_time_now(void)
{
	pg_time_t	t = timestamptz_to_time_t(GetCurrentTimestamp()) + 8 * 3600;
	time_t		tt = (time_t) t;
	struct tm	tm;
	char		buf[64];

	gmtime_r(&tt, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S+08:00", &tm);
	return pstrdup(buf);
}

/* A verdict of our own: U with a local code, nothing else */
static void
local_verdict(ApsResult *r, const char *code, const char *message)
{
	memset(r, 0, sizeof(*r));
	r->result_status = "U";
	r->result_code = (char *) code;
	r->result_message = (char *) message;
}

/* The value of n decimal digits at s (the caller has checked they are digits) */
static int
digits_value(const char *s, int n)
{
	int			v = 0;

	while (n-- > 0)
		v = v * 10 + (*s++ - '0');
	return v;
}

/*
 * Whether a Response-Time header (or an inquiry's paymentTime) is a
 * date-time of the form Alipay+ sends: YYYY-MM-DDThh:mm:ss, an optional
 * fraction of a second, then "Z" or a UTC offset +hh:mm / -hh:mm
 * (2025-01-15T10:30:01+08:00).  The calendar is checked with plain
 * arithmetic (month 1 to 12, the day within its month, hour up to
 * 24:00:00, a leap second 60, an offset up to 15:59): nothing here looks
 * anything up, so no session setting (timezone_abbreviations, TimeZone,
 * DateStyle) can make it refuse a good answer or raise an error.  When at
 * is not NULL, the instant is stored there (a leap second counts as the
 * next second's start, digits of the fraction beyond microseconds are
 * dropped); false if it is outside PostgreSQL's range.
 */
static bool
iso8601_time(const char *s, TimestampTz *at)
{
	static const char shape[] = "dddd-dd-ddTdd:dd:dd";
	const char *p;
	int			year,
				month,
				day,
				hour,
				minute,
				second;
	int			offset_minutes = 0;
	int64		usec = 0;
	int			usec_digits = 0;
	bool		zero_fraction = true;

	for (int i = 0; shape[i] != '\0'; i++)
		if (shape[i] == 'd' ? !isdigit((unsigned char) s[i]) : s[i] != shape[i])
			return false;
	year = digits_value(s, 4);
	month = digits_value(s + 5, 2);
	day = digits_value(s + 8, 2);
	hour = digits_value(s + 11, 2);
	minute = digits_value(s + 14, 2);
	second = digits_value(s + 17, 2);
	p = s + sizeof(shape) - 1;
	if (*p == '.')
	{
		if (!isdigit((unsigned char) p[1]))
			return false;
		for (p++; isdigit((unsigned char) *p); p++)
		{
			if (*p != '0')
				zero_fraction = false;
			if (usec_digits < 6)
			{
				usec = usec * 10 + (*p - '0');
				usec_digits++;
			}
		}
		for (; usec_digits < 6; usec_digits++)
			usec *= 10;
	}
	if (strcmp(p, "Z") != 0)
	{
		if ((*p != '+' && *p != '-') ||
			!isdigit((unsigned char) p[1]) || !isdigit((unsigned char) p[2]) ||
			p[3] != ':' ||
			!isdigit((unsigned char) p[4]) || !isdigit((unsigned char) p[5]) ||
			p[6] != '\0')
			return false;
		if (digits_value(p + 1, 2) > 15 || digits_value(p + 4, 2) > 59)
			return false;
		offset_minutes = (digits_value(p + 1, 2) * 60 + digits_value(p + 4, 2)) *
			(*p == '-' ? -1 : 1);
	}

	if (year < 1 || month < 1 || month > 12 ||
		day < 1 || day > day_tab[isleap(year) ? 1 : 0][month - 1])
		return false;
	if (hour == 24 ? minute != 0 || second != 0 || !zero_fraction :
		hour > 23 || minute > 59 || second > 60)
		return false;
	if (at != NULL)
	{
		int64		days = date2j(year, month, day) - POSTGRES_EPOCH_JDATE;
		int64		seconds = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60 + second;

		*at = (TimestampTz) (seconds * USECS_PER_SEC + usec);
		if (!IS_VALID_TIMESTAMP(*at))
			return false;
	}
	return true;
}

/* Whether a Response-Time header is a date-time (see iso8601_time) */
static bool
response_time_valid(const char *s)
{
	return iso8601_time(s, NULL);
}

/* Whether s is 1 to 18 decimal digits (an amount in minor units fits int64) */
static bool
minor_units_valid(const char *s)
{
	size_t		n = strspn(s, "0123456789");

	return n >= 1 && n <= 18 && s[n] == '\0';
}

/*
 * What is wrong with the payment's fields of an inquiry's answer (already
 * parsed, its result and paymentResult well formed), or NULL.  field and
 * value are what was asked about.  Only a result S speaks of the payment;
 * the payment's fields of any other answer are dropped here.
 */
static char *
payment_fields_problem(ApsResult *r, const char *field, const char *value)
{
	char	   *sent = pg_server_to_any(value, strlen(value), PG_UTF8);
	const char *echoed = strcmp(field, "paymentId") == 0 ?
		r->payment_id : r->payment_request_id;

	if (r->result_status[0] != 'S')
	{
		ApsResult	kept = *r;

		memset(r, 0, sizeof(*r));
		r->result_status = kept.result_status;
		r->result_code = kept.result_code;
		r->result_message = kept.result_message;
		r->acquirer_id = kept.acquirer_id;
		r->psp_id = kept.psp_id;
		return NULL;
	}
	if (!r->saw_payment_result)
		return "result S without a paymentResult: the payment's state is not given";
	/*
	 * Alipay+ echoes both ids in a result S: one that lacks the id asked
	 * about cannot be tied to the payment, so it decides nothing
	 */
	if (echoed == NULL)
		return psprintf("result S without the %s asked about: the answer cannot be tied to the payment",
						field);
	if (strcmp(echoed, sent) != 0)
		return psprintf("the answer is about %s \"%s\", not the one asked about",
						field, aps_network_text(echoed, strlen(echoed)));
	if (r->payment_time != NULL && !iso8601_time(r->payment_time, NULL))
		return psprintf("paymentTime \"%s\" is not a date-time of the form YYYY-MM-DDThh:mm:ss+hh:mm",
						aps_network_text(r->payment_time, strlen(r->payment_time)));
	if ((r->amount_currency == NULL) != (r->amount_value == NULL) ||
		(r->amount_currency != NULL && r->amount_currency[0] == '\0'))
		return "paymentAmount needs both a currency and a value";
	if (r->amount_value != NULL && !minor_units_valid(r->amount_value))
		return psprintf("paymentAmount.value \"%s\" is not 1 to 18 decimal digits",
						aps_network_text(r->amount_value, strlen(r->amount_value)));
	return NULL;
}

/*
 * Decide what an exchange of operation op, for the id value sent in field,
 * means.  Sets *verified (NULL-able through *verified_known) and *detail.
 */
static void
classify(ApsHttpExchange *ex, const ApsOperation *op, const char *field,
		 const char *value, ApsResult *r,
		 bool *verified, bool *verified_known, char **detail)
{
	ApsResult	parsed;
	char	   *problem = NULL;
	bool		parsed_ok;
	bool		has_sig = ex->hdr_signature != NULL;
	bool		has_time = ex->hdr_response_time != NULL;

	*verified_known = false;
	*detail = NULL;

	if (ex->not_sent)
	{
		local_verdict(r, "local.not_sent", "the run's time ran out before this call could start; nothing was sent");
		*detail = "not sent";
		return;
	}

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

	/*
	 * A Signature, Response-Time, Client-Id or Content-Encoding header given
	 * more than once: which one counts cannot be told, so none does.
	 */
	if (ex->hdr_repeated != NULL)
	{
		if (strcmp(ex->hdr_repeated, "Client-Id") == 0)
			local_verdict(r, "local.client_id_mismatch", "the response names its client id more than once; the outcome is unknown");
		else if (strcmp(ex->hdr_repeated, "Content-Encoding") == 0)
			local_verdict(r, "local.bad_response", op->not_a_result);
		else if (strcmp(ex->hdr_repeated, "Response-Time") == 0)
			local_verdict(r, "local.bad_signature", "the response gives its Response-Time more than once; the outcome is unknown");
		else
			local_verdict(r, "local.bad_signature", "the response is signed more than once; the outcome is unknown");
		*detail = psprintf("response has %d %s headers", ex->hdr_repeats,
						   ex->hdr_repeated);
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

	parsed_ok = aps_parse_result(ex->response, ex->response_len,
								 op->payment_fields, &parsed, &problem);

	if (has_sig && has_time)
	{
		char	   *content;
		size_t		content_len;

		if (!response_time_valid(ex->hdr_response_time))
		{
			local_verdict(r, "local.bad_signature", "the response's Response-Time is not a time; the outcome is unknown");
			*detail = psprintf("Response-Time \"%s\" is not a date-time of the form YYYY-MM-DDThh:mm:ss+hh:mm",
							   ex->hdr_response_time);
			return;
		}
		content = aps_content_to_sign(*op->path, aps_client_id, ex->hdr_response_time,
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

	/* libcurl was not asked to decode anything: the body is not the JSON */
	if (ex->hdr_content_encoding != NULL &&
		pg_strcasecmp(ex->hdr_content_encoding, "identity") != 0)
	{
		local_verdict(r, "local.bad_response", op->not_a_result);
		*detail = psprintf("response has Content-Encoding \"%s\", which was not asked for",
						   ex->hdr_content_encoding);
		return;
	}

	if (!parsed_ok)
	{
		local_verdict(r, "local.bad_response", op->not_a_result);
		*detail = problem;
		return;
	}

	if (!*verified_known && parsed.result_status[0] == 'S')
	{
		local_verdict(r, "local.unsigned_success", "an unsigned response claimed success; the outcome is unknown");
		*detail = psprintf("unsigned response claimed S %s", parsed.result_code);
		return;
	}

	if (op->payment_fields &&
		(problem = payment_fields_problem(&parsed, field, value)) != NULL)
	{
		local_verdict(r, "local.bad_response", op->not_a_result);
		*detail = problem;
		return;
	}

	*r = parsed;
}

/*
 * The URL of an operation's API: alipayplus.gateway_url + its path
 * (alipayplus.cancel_path, alipayplus.inquiry_path)
 */
char *
aps_operation_url(const ApsOperation *op)
{
	size_t		baselen = strlen(aps_gateway_url);

	if (baselen > 0 && aps_gateway_url[baselen - 1] == '/')
		baselen--;
	return psprintf("%.*s%s", (int) baselen, aps_gateway_url, *op->path);
}

/*
 * A signed request of operation op for one id, ready for the transport.
 * request_time: the Request-Time to sign (the pipeline fixes it in the
 * claimed attempt before sending); NULL: now.
 */
ApsHttpExchange *
aps_prepare_exchange(const ApsOperation *op, const char *field,
					 const char *value, EVP_PKEY *key, const char *url,
					 const char *request_time)
{
	ApsHttpExchange *ex = palloc0(sizeof(ApsHttpExchange));
	char	   *body = aps_cancel_body(field, value);
	char	   *content;
	size_t		content_len;

	if (request_time == NULL)
		request_time = aps_request_time_now();
	content = aps_content_to_sign(*op->path, aps_client_id, request_time,
								  body, strlen(body), &content_len);
	ex->url = url;
	ex->body = body;
	ex->body_len = strlen(body);
	ex->client_id = aps_client_id;
	ex->request_time = pstrdup(request_time);
	ex->signature = aps_signature_header(aps_sign(key, content, content_len));
	return ex;
}

/*
 * The result columns of one exchange of operation op (what was sent and
 * what it means) into values[] and nulls[]: APS_CALL_NUM_COLS of them,
 * APS_INQ_NUM_COLS for an operation with payment fields.
 */
static void
result_values(ApsHttpExchange *ex, const ApsOperation *op, const char *field,
			  const char *value, Datum *values, bool *nulls)
{
	ApsResult	r;
	bool		verified = false;
	bool		verified_known = false;
	char	   *detail;

	classify(ex, op, field, value, &r, &verified, &verified_known, &detail);

	memset(nulls, 0, sizeof(bool) *
		   (op->payment_fields ? APS_INQ_NUM_COLS : APS_CALL_NUM_COLS));
	values[APS_CALL_SENT_FIELD] = CStringGetTextDatum(field);
	values[APS_CALL_SENT_ID] = CStringGetTextDatum(value);
	values[APS_CALL_REQUEST_TIME] = CStringGetTextDatum(ex->request_time);
	values[APS_CALL_HTTP_STATUS] = Int32GetDatum((int32) ex->http_status);
	nulls[APS_CALL_HTTP_STATUS] = ex->http_status == 0;
	values[APS_CALL_RESULT_STATUS] = CStringGetTextDatum(r.result_status);

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
	NETWORK_TEXT_OR_NULL(APS_CALL_RESULT_CODE, r.result_code);
	NETWORK_TEXT_OR_NULL(APS_CALL_RESULT_MESSAGE, r.result_message);
	NETWORK_TEXT_OR_NULL(APS_CALL_ACQUIRER_ID, r.acquirer_id);
	NETWORK_TEXT_OR_NULL(APS_CALL_PSP_ID, r.psp_id);
	NETWORK_TEXT_OR_NULL(APS_CALL_ERROR_DETAIL, detail);
	if (op->payment_fields)
	{
		TimestampTz at;

		NETWORK_TEXT_OR_NULL(APS_INQ_PAYMENT_STATUS, r.payment_status);
		NETWORK_TEXT_OR_NULL(APS_INQ_PAYMENT_CODE, r.payment_code);
		NETWORK_TEXT_OR_NULL(APS_INQ_PAYMENT_MESSAGE, r.payment_message);
		NETWORK_TEXT_OR_NULL(APS_INQ_PAYMENT_ID, r.payment_id);
		NETWORK_TEXT_OR_NULL(APS_INQ_PAYMENT_REQUEST_ID, r.payment_request_id);
		NETWORK_TEXT_OR_NULL(APS_INQ_AMOUNT_CURRENCY, r.amount_currency);
		/* both checked by payment_fields_problem() */
		nulls[APS_INQ_PAYMENT_TIME] = r.payment_time == NULL ||
			!iso8601_time(r.payment_time, &at);
		if (!nulls[APS_INQ_PAYMENT_TIME])
			values[APS_INQ_PAYMENT_TIME] = TimestampTzGetDatum(at);
		nulls[APS_INQ_AMOUNT_VALUE] = r.amount_value == NULL;
		if (r.amount_value != NULL)
			values[APS_INQ_AMOUNT_VALUE] = Int64GetDatum(strtoi64(r.amount_value, NULL, 10));
	}
#undef NETWORK_TEXT_OR_NULL
	values[APS_CALL_SIGNATURE_VERIFIED] = BoolGetDatum(verified);
	nulls[APS_CALL_SIGNATURE_VERIFIED] = !verified_known;
	values[APS_CALL_LATENCY_MS] = Float8GetDatum(ex->latency_ms);
}

/*
 * The result columns of one finished exchange of operation op, as
 * aps_call_one() gives them (the payment's columns too for an inquiry)
 */
void
aps_operation_result(ApsHttpExchange *ex, const ApsOperation *op,
					 const char *field, const char *value,
					 ApsCallResult *result)
{
	result_values(ex, op, field, value, result->values, result->nulls);
}

/* The cancelPayment forms of the three above, as the pipeline names them */
char *
aps_cancel_url(void)
{
	return aps_operation_url(&aps_cancel_operation);
}

ApsHttpExchange *
aps_prepare_cancel(const char *field, const char *value, EVP_PKEY *key,
				   const char *url, const char *request_time)
{
	return aps_prepare_exchange(&aps_cancel_operation, field, value, key, url,
								request_time);
}

void
aps_cancel_result(ApsHttpExchange *ex, const char *field, const char *value,
				  ApsCallResult *result)
{
	aps_operation_result(ex, &aps_cancel_operation, field, value, result);
}

/*
 * One signed call for one id, with the configuration already checked
 * (key from aps_check_config()): what was sent and what it means, in the
 * columns of alipayplus._call_cancel.
 */
void
aps_call_one(const char *field, const char *value, EVP_PKEY *key,
			 ApsCallResult *result)
{
	ApsHttpExchange *ex = aps_prepare_cancel(field, value, key,
											 aps_cancel_url(), NULL);

	aps_http_post(ex);
	aps_cancel_result(ex, field, value, result);
}

/*
 * One signed call of operation op for the id given in the function's
 * first two arguments (payment_id, payment_request_id), the configuration
 * checked by check_config first.  Returns what was sent and what it means
 * as the function's record.
 */
static Datum
call_one(FunctionCallInfo fcinfo, const ApsOperation *op,
		 EVP_PKEY *(*check_config) (void))
{
	const char *field;
	char	   *value;
	ApsHttpExchange *ex;
	TupleDesc	tupdesc;
	Datum		values[APS_INQ_NUM_COLS];
	bool		nulls[APS_INQ_NUM_COLS];
	EVP_PKEY   *key;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	if (tupdesc->natts != (op->payment_fields ? APS_INQ_NUM_COLS : APS_CALL_NUM_COLS))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the %s function's result has %d columns, not the library's %d",
						op->api, tupdesc->natts,
						op->payment_fields ? APS_INQ_NUM_COLS : APS_CALL_NUM_COLS),
				 errhint("Run ALTER EXTENSION alipayplus_cancel UPDATE.")));

	check_ids(fcinfo, &field, &value);
	key = check_config();

	ex = aps_prepare_exchange(op, field, value, key, aps_operation_url(op), NULL);
	aps_http_post(ex);
	result_values(ex, op, field, value, values, nulls);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * alipayplus._call_cancel(payment_id, payment_request_id): one signed
 * cancelPayment call.  Returns what was sent and what it means.
 */
Datum
alipayplus_call_cancel(PG_FUNCTION_ARGS)
{
	return call_one(fcinfo, &aps_cancel_operation, aps_check_config);
}

/*
 * What an inquiry needs: a transaction that can record it (refused like a
 * cancellation, with its own words), the settings and the keys.  No
 * durability warning: a lost inquiry record loses no cancellation.
 */
static EVP_PKEY *
check_inquiry_config(void)
{
	aps_refuse_read_only_to("inquire about Alipay+ payments");
	return check_settings();
}

/*
 * alipayplus._call_inquiry(payment_id, payment_request_id): one signed
 * inquiryPayment call.  Returns what was sent and what it means: the
 * columns of _call_cancel, then the payment's result and fields.
 */
Datum
alipayplus_call_inquiry(PG_FUNCTION_ARGS)
{
	return call_one(fcinfo, &aps_inquiry_operation, check_inquiry_config);
}

/*
 * alipayplus._call_cancel_many(fields text[], ids text[]): one signed
 * cancelPayment call per id, alipayplus.max_concurrency of them in flight
 * at once.  Returns one row per id, in the order given, with its position
 * (ord, from 1) first and then the columns of _call_cancel.  fields[i] is
 * "paymentRequestId" or "paymentId".  max_ms, when not NULL, caps every
 * call's time so that the whole batch ends within it (a processor run's
 * time budget).
 */
Datum
alipayplus_call_cancel_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *fields;
	bool	   *fieldnulls;
	int			nfields;
	Datum	   *ids;
	bool	   *idnulls;
	int			nids;
	ApsHttpExchange **exs;
	char	  **fieldstr;
	char	  **idstr;
	EVP_PKEY   *key;
	char	   *url;
	int			max_ms;
	TimestampTz deadline;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("fields and ids must not be null")));
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), TEXTOID, -1, false,
					  TYPALIGN_INT, &fields, &fieldnulls, &nfields);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false,
					  TYPALIGN_INT, &ids, &idnulls, &nids);
	if (nfields != nids)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("fields and ids must have the same length")));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (nids == 0)
		return (Datum) 0;

	/* one deadline for the whole batch, taken before any signing */
	max_ms = PG_ARGISNULL(2) ? 0 : Max(PG_GETARG_INT32(2), 1);
	deadline = max_ms > 0 ? GetCurrentTimestamp() + (TimestampTz) max_ms * 1000 : 0;
	key = aps_check_config();
	url = aps_cancel_url();
	exs = palloc(sizeof(ApsHttpExchange *) * nids);
	fieldstr = palloc(sizeof(char *) * nids);
	idstr = palloc(sizeof(char *) * nids);
	for (int i = 0; i < nids; i++)
	{
		if (fieldnulls[i] || idnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("fields and ids must not contain nulls")));
		fieldstr[i] = TextDatumGetCString(fields[i]);
		idstr[i] = TextDatumGetCString(ids[i]);
		if (strcmp(fieldstr[i], "paymentRequestId") == 0)
			check_id("payment_request_id", idstr[i]);
		else if (strcmp(fieldstr[i], "paymentId") == 0)
			check_id("payment_id", idstr[i]);
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("field must be paymentRequestId or paymentId, not \"%s\"",
							fieldstr[i])));
		exs[i] = aps_prepare_cancel(fieldstr[i], idstr[i], key, url, NULL);
		exs[i]->deadline = deadline;
	}

	aps_http_post_many(exs, nids, aps_max_concurrency);

	for (int i = 0; i < nids; i++)
	{
		Datum		values[APS_CALL_NUM_COLS + 1];
		bool		nulls[APS_CALL_NUM_COLS + 1];

		values[0] = Int32GetDatum(i + 1);
		nulls[0] = false;
		result_values(exs[i], &aps_cancel_operation, fieldstr[i], idstr[i],
					  values + 1, nulls + 1);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
