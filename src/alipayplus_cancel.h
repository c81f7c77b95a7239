/*-------------------------------------------------------------------------
 *
 * alipayplus_cancel.h
 *	  Declarations shared by the files of the alipayplus_cancel extension:
 *	  settings, signing, JSON, transport, the cancel call itself and the
 *	  ledger.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ALIPAYPLUS_CANCEL_H
#define ALIPAYPLUS_CANCEL_H

#include "postgres.h"

#include <openssl/evp.h>

#include "datatype/timestamp.h"
#include "fmgr.h"

struct curl_slist;

/* Extension-specific SQLSTATEs (class ZA), documented in README.md */
#define ERRCODE_APS_CANCELLED_STATE_VIOLATION	MAKE_SQLSTATE('Z','A','0','0','1')
#define ERRCODE_APS_WINDOW_CLOSED				MAKE_SQLSTATE('Z','A','0','0','2')
#define ERRCODE_APS_IS_A_REFUND					MAKE_SQLSTATE('Z','A','0','0','3')
#define ERRCODE_APS_NOT_PENDING					MAKE_SQLSTATE('Z','A','0','0','5')

/* The largest response body we accept from the gateway */
#define APS_MAX_RESPONSE_BYTES	(1024 * 1024)

/* Most calls one backend keeps in flight (alipayplus.max_concurrency) */
#define APS_MAX_CONCURRENCY	1024

/* Longest paymentId / paymentRequestId the API accepts, in characters */
#define APS_MAX_ID_CHARS	64

/* Longest alipayplus.client_id, in bytes */
#define APS_MAX_CLIENT_ID_BYTES	128

/* Deepest nesting of objects and arrays accepted in a response body */
#define APS_MAX_JSON_DEPTH	64

/* Longest text from the network stored in a column, in bytes */
#define APS_MAX_NETWORK_TEXT_BYTES	512

/* settings.c */
extern char *aps_gateway_url;
extern char *aps_cancel_path;
extern char *aps_inquiry_path;
extern char *aps_client_id;
extern char *aps_private_key_file;
extern char *aps_public_key_file;
extern int	aps_key_version;
extern int	aps_response_key_version;
extern char *aps_ca_file;
extern char *aps_proxy;
extern int	aps_connect_timeout_ms;
extern int	aps_timeout_ms;
extern int	aps_max_concurrency;
extern int	aps_max_attempts;

extern void aps_define_settings(void);
extern void aps_require_setting(const char *name, const char *value);

/* signing.c */
extern EVP_PKEY *aps_private_key(void);
extern EVP_PKEY *aps_public_key(void);
extern EVP_PKEY *aps_decode_key(const char *data, size_t len, int selection);
extern char *aps_content_to_sign(const char *path, const char *client_id,
								 const char *time, const char *body,
								 size_t body_len, size_t *content_len);
extern char *aps_sign(EVP_PKEY *key, const char *content, size_t len);
extern bool aps_verify_signature(EVP_PKEY *key, const char *content,
								 size_t len, const char *signature);
extern char *aps_signature_header(const char *base64_signature);

/* json.c */
typedef struct ApsResult
{
	/* strings of a parsed response are UTF-8, as received */
	char	   *result_status;	/* "S", "F" or "U" */
	char	   *result_code;
	char	   *result_message;
	char	   *acquirer_id;
	char	   *psp_id;
	/* inquiryPayment only: the payment's own result and what it was */
	bool		saw_payment_result;
	char	   *payment_status; /* paymentResult.resultStatus */
	char	   *payment_code;
	char	   *payment_message;
	char	   *payment_id;
	char	   *payment_request_id;
	char	   *payment_time;	/* ISO 8601, as received */
	char	   *amount_currency;	/* paymentAmount.currency */
	char	   *amount_value;	/* paymentAmount.value: minor units */
} ApsResult;

extern char *aps_cancel_body(const char *field, const char *value);
extern bool aps_parse_result(const char *body, size_t len, bool payment_fields,
							 ApsResult *result, char **problem);
extern char *aps_network_text(const char *s, size_t len);

/* transport.c */
typedef struct ApsHttpExchange
{
	/* what to send */
	const char *url;
	const char *body;
	size_t		body_len;
	const char *client_id;
	const char *request_time;
	const char *signature;
	TimestampTz deadline;		/* when set, the call ends by then at the latest */
	bool		no_statement_cap;	/* the pipeline ends it at the caller's
									 * statement_timeout itself, as
									 * local.statement_timeout */

	/* what came back */
	int			curl_code;		/* a CURLcode; 0 is success */
	char	   *curl_error;		/* libcurl's message when curl_code != 0 */
	long		http_status;
	char	   *response;		/* NUL-terminated copy of the body */
	size_t		response_len;
	size_t		response_cap;
	bool		response_too_large;
	bool		response_no_memory;
	char	   *hdr_signature;	/* response headers, NULL when absent */
	char	   *hdr_response_time;
	char	   *hdr_client_id;
	char	   *hdr_content_encoding;
	const char *hdr_repeated;	/* a header above that came more than once */
	int			hdr_repeats;	/* and how many times */
	double		latency_ms;

	/* the transfer itself (transport.c) */
	void	   *easy;			/* the libcurl handle while in flight */
	struct curl_slist *headers;
	char	   *errbuf;
	TimestampTz started_at;
	long		timeout_ms;		/* the time it may take */
	TimestampTz timeout_at;		/* started_at + timeout_ms */
	bool		done;
	bool		not_sent;		/* its deadline passed before it could start */
} ApsHttpExchange;

extern int	aps_http_begin(int want);
extern int	aps_http_in_flight(void);
extern void aps_http_add(ApsHttpExchange *ex);
extern int	aps_http_wait(int timeout_ms);
extern void aps_http_abandon_all(void);
extern void aps_http_end(void);
extern bool aps_interrupt_pending(void);
extern void aps_http_post(ApsHttpExchange *exchange);
extern void aps_http_post_many(ApsHttpExchange **exchanges, int n,
							   int concurrency);
extern const char *aps_transport_failure_code(int curl_code);

/*
 * cancel.c: the Alipay+ APIs called, each one operation of the one call
 * path (signing, transport, verification and local codes are shared): what
 * differs is the setting that holds its path, its name in messages, and
 * whether its answer carries the payment's fields.  The request body is
 * {"<field>":"<id>"} for both.
 */
typedef struct ApsOperation
{
	const char *api;			/* "cancelPayment", in messages */
	char	  **path;			/* the setting holding its request path */
	bool		payment_fields; /* the answer has paymentResult and more */
	const char *not_a_result;	/* the message of local.bad_response */
} ApsOperation;

extern const ApsOperation aps_cancel_operation;
extern const ApsOperation aps_inquiry_operation;

/*
 * The columns of alipayplus._call_cancel's result, in order; those of
 * alipayplus._call_inquiry are the same followed by APS_INQ_*.
 */
enum
{
	APS_CALL_SENT_FIELD,
	APS_CALL_SENT_ID,
	APS_CALL_REQUEST_TIME,
	APS_CALL_HTTP_STATUS,
	APS_CALL_RESULT_STATUS,
	APS_CALL_RESULT_CODE,
	APS_CALL_RESULT_MESSAGE,
	APS_CALL_ACQUIRER_ID,
	APS_CALL_PSP_ID,
	APS_CALL_SIGNATURE_VERIFIED,
	APS_CALL_LATENCY_MS,
	APS_CALL_ERROR_DETAIL,
	APS_CALL_NUM_COLS
};

enum
{
	APS_INQ_PAYMENT_STATUS = APS_CALL_NUM_COLS,
	APS_INQ_PAYMENT_CODE,
	APS_INQ_PAYMENT_MESSAGE,
	APS_INQ_PAYMENT_ID,
	APS_INQ_PAYMENT_REQUEST_ID,
	APS_INQ_PAYMENT_TIME,
	APS_INQ_AMOUNT_CURRENCY,
	APS_INQ_AMOUNT_VALUE,
	APS_INQ_NUM_COLS
};

typedef struct ApsCallResult
{
	Datum		values[APS_INQ_NUM_COLS];	/* a cancel uses the first
											 * APS_CALL_NUM_COLS */
	bool		nulls[APS_INQ_NUM_COLS];
} ApsCallResult;

typedef struct ApsCallColumn
{
	const char *name;
	Oid			type;
} ApsCallColumn;

extern const ApsCallColumn aps_call_columns[APS_CALL_NUM_COLS];
extern void aps_check_id_pair(const char *payment_id, const char *request_id);
extern void aps_refuse_read_only(void);
extern void aps_refuse_read_only_to(const char *what);
extern EVP_PKEY *aps_check_config(void);
extern void aps_warn_durability(void);
extern char *aps_operation_url(const ApsOperation *op);
extern ApsHttpExchange *aps_prepare_exchange(const ApsOperation *op,
											 const char *field,
											 const char *value, EVP_PKEY *key,
											 const char *url,
											 const char *request_time);
extern void aps_operation_result(ApsHttpExchange *ex, const ApsOperation *op,
								 const char *field, const char *value,
								 ApsCallResult *result);
extern char *aps_cancel_url(void);
extern ApsHttpExchange *aps_prepare_cancel(const char *field, const char *value,
										   EVP_PKEY *key, const char *url,
										   const char *request_time);
extern char *aps_request_time_now(void);
extern void aps_cancel_result(ApsHttpExchange *ex, const char *field,
							  const char *value, ApsCallResult *result);
extern void aps_call_one(const char *field, const char *value, EVP_PKEY *key,
						 ApsCallResult *result);

/* guard.c */
extern void aps_guard_init(void);

/* ledger.c */
extern void aps_require_top_level(FunctionCallInfo fcinfo, const char *name);
extern char *aps_settle_claimed(int64 cancellation_id, int64 attempt_id,
								const ApsCallResult *r, TimestampTz answered_at,
								const char *caller, bool interrupted,
								bool *attention);

/* orders.c */
extern bool aps_ledger_write_allows(const char *field, const char *id,
									const char *status);
extern char *aps_ledger_state(Oid relid, const char *request_id,
							  const char *payment_id, bool *bound,
							  char **key_field, char **key_id);

/* processor.c: the claim-then-call pipeline every processor form runs */
typedef enum ApsTxnMode
{
	APS_TXN_CALLER,				/* the caller's transaction: never commits */
	APS_TXN_PROCEDURE,			/* a CALLed procedure: commits with SPI_commit */
	APS_TXN_WORKER				/* a background worker: own transactions */
} ApsTxnMode;

typedef enum ApsPollVerdict
{
	APS_POLL_GO_ON,
	APS_POLL_LOOK_FOR_WORK,		/* claim again now (the worker's latch was set) */
	APS_POLL_DRAIN,				/* no more claims; settle the calls in flight
								 * as they are answered, then return */
	APS_POLL_STOP				/* no more claims; settle, abandon, return */
} ApsPollVerdict;

typedef struct ApsRunOptions
{
	ApsTxnMode	mode;
	int64		max_count;		/* claims at most this many */
	int			time_budget_ms;
	const char *caller;			/* processor_runs.caller */
	/*
	 * Called between waits (<= 10 ms apart while calls are in flight).
	 * Worker: latch set -> LOOK_FOR_WORK, SIGTERM -> STOP; NULL elsewhere.
	 */
	ApsPollVerdict (*poll) (void *arg);
	void	   *poll_arg;
	int			progress_ms;	/* backlog's progress NOTICEs; 0: none */
	/*
	 * Issue 15: the job kinds served (APS_KIND_*; 0: all of them, so a
	 * zeroed ApsRunOptions serves cancellations and resolutions), and
	 * whether the run waits for the next inquiry of a resolution still
	 * unknown (alipayplus_resolve_backlog) rather than stop "nothing due".
	 */
	int			kinds;
	bool		wait_for_inquiries;
} ApsRunOptions;

#define APS_KIND_CANCEL		0x01	/* alipayplus.cancellations */
#define APS_KIND_RESOLVE	0x02	/* alipayplus.resolutions */

typedef struct ApsRunCounts
{
	int64		run_id;			/* 0 when the run claimed nothing and wrote no
								 * row (worker) */
	int			claimed,
				cancelled,
				retrying,
				attention,
				unanswered,
				busy;
	double		elapsed_ms;
	char	   *last_error;
	const char *stopped_because;
	TimestampTz next_due;		/* earliest next_attempt_at of a CANCELLING
								 * row not flagged, or next_inquiry_at of a
								 * RESOLVING resolution; 0 if none */
	/* issue 15: the inquiries of resolutions and what they decided */
	int			inquired,
				paid,
				failed,
				to_cancel,		/* a cancellation was requested */
				waiting,		/* still unknown: asked again later */
				settled_elsewhere,	/* the order no longer pending: not applied */
				resolve_attention;	/* an F of the inquiry, a refused cancel,
								 * an answer the order could not take */
	int64		still_unknown;	/* RESOLVING resolutions at the last look */
} ApsRunCounts;

/*
 * Runs the pipeline.  In APS_TXN_WORKER mode it is called and returns
 * outside any transaction; every curl resource is freed on every path; an
 * ERROR propagates.
 */
extern void aps_run_processor(const ApsRunOptions *opts, ApsRunCounts *counts);

/* worker.c: the background worker and its wake-up */
extern char *aps_database_name;
extern void aps_worker_init(void);

#endif							/* ALIPAYPLUS_CANCEL_H */
