/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  The alipayplus.* configuration parameters.
 *
 * Every parameter but alipayplus.database_name (PGC_POSTMASTER: set in
 * postgresql.conf or ALTER SYSTEM, read at server start) is PGC_SUSET:
 * only superusers (or roles granted SET on the parameter) can change it,
 * in postgresql.conf, ALTER SYSTEM or SET.
 * The key file names are GUC_SUPERUSER_ONLY so that other roles cannot even
 * read them.  Values are read afresh on every call, so a pg_reload_conf()
 * takes effect in running sessions at their next statement.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "alipayplus_cancel.h"

char	   *aps_gateway_url = NULL;
char	   *aps_cancel_path = NULL;
char	   *aps_inquiry_path = NULL;
char	   *aps_client_id = NULL;
char	   *aps_private_key_file = NULL;
char	   *aps_public_key_file = NULL;
int			aps_key_version = 1;
int			aps_response_key_version = 1;
char	   *aps_ca_file = NULL;
char	   *aps_proxy = NULL;
int			aps_connect_timeout_ms = 3000;
int			aps_timeout_ms = 10000;
int			aps_max_concurrency = 16;

/* The database the background worker serves (worker.c); empty: no worker */
char	   *aps_database_name = NULL;

/* Read by the SQL ledger functions through current_setting() */
int			aps_max_attempts = 10;
static int	aps_retry_base_ms = 5000;
static int	aps_retry_max_ms = 900000;

/*
 * alipayplus.gateway_url must be "https://host[:port]", with nothing after
 * the authority: the path comes from alipayplus.cancel_path.
 */
static bool
check_gateway_url(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;
	const char *authority;
	const char *p;

	if (url == NULL || url[0] == '\0')
		return true;
	if (pg_strncasecmp(url, "https://", 8) != 0)
	{
		GUC_check_errdetail("The gateway URL must start with \"https://\"; plain HTTP is not supported.");
		return false;
	}
	authority = url + 8;
	if (*authority == '\0' || *authority == '/' || *authority == ':')
	{
		GUC_check_errdetail("The gateway URL has no host name.");
		return false;
	}
	for (p = authority; *p; p++)
	{
		if (*p == '/' && p[1] == '\0')
			break;				/* one trailing slash is tolerated */
		if (*p == '/' || *p == '?' || *p == '#' || *p == '@' ||
			(unsigned char) *p <= ' ')
		{
			GUC_check_errdetail("The gateway URL must be scheme://host[:port] only; set the path in alipayplus.cancel_path.");
			return false;
		}
	}
	return true;
}

/*
 * An API's path (alipayplus.cancel_path, alipayplus.inquiry_path; "which"
 * is "cancel" or "inquiry") must be an absolute path without blanks
 */
static bool
check_api_path(const char *path, const char *which)
{
	const char *p;

	if (path == NULL || path[0] != '/')
	{
		GUC_check_errdetail("The %s path must start with \"/\".", which);
		return false;
	}
	for (p = path; *p; p++)
	{
		if ((unsigned char) *p <= ' ' || *p == '#')
		{
			GUC_check_errdetail("The %s path must not contain blanks, control characters or \"#\".", which);
			return false;
		}
	}
	return true;
}

static bool
check_cancel_path(char **newval, void **extra, GucSource source)
{
	return check_api_path(*newval, "cancel");
}

static bool
check_inquiry_path(char **newval, void **extra, GucSource source)
{
	return check_api_path(*newval, "inquiry");
}

/*
 * alipayplus.client_id goes into a header and into the signed content:
 * printable ASCII without blanks or ".", and not longer than Alipay+'s ids
 * could plausibly be.
 */
static bool
check_client_id(char **newval, void **extra, GucSource source)
{
	const char *p;

	for (p = *newval; p && *p; p++)
	{
		if ((unsigned char) *p < ' ' || *p == 0x7f || *p == '.')
		{
			GUC_check_errdetail("The client id must not contain control characters or \".\".");
			return false;
		}
		if (*p == ' ' || IS_HIGHBIT_SET(*p))
		{
			GUC_check_errdetail("The client id must consist of printable ASCII characters without blanks.");
			return false;
		}
	}
	if (*newval != NULL && strlen(*newval) > APS_MAX_CLIENT_ID_BYTES)
	{
		GUC_check_errdetail("The client id is %zu bytes long; at most %d are allowed.",
							strlen(*newval), APS_MAX_CLIENT_ID_BYTES);
		return false;
	}
	return true;
}

void
aps_define_settings(void)
{
	DefineCustomStringVariable("alipayplus.gateway_url",
							   "Base URL of the Alipay+ gateway, https://host[:port].",
							   NULL,
							   &aps_gateway_url,
							   "",
							   PGC_SUSET, 0,
							   check_gateway_url, NULL, NULL);

	DefineCustomStringVariable("alipayplus.cancel_path",
							   "Request path of the cancelPayment API.",
							   NULL,
							   &aps_cancel_path,
							   "/aps/api/v1/payments/cancelPayment",
							   PGC_SUSET, 0,
							   check_cancel_path, NULL, NULL);

	DefineCustomStringVariable("alipayplus.inquiry_path",
							   "Request path of the inquiryPayment API.",
							   NULL,
							   &aps_inquiry_path,
							   "/aps/api/v1/payments/inquiryPayment",
							   PGC_SUSET, 0,
							   check_inquiry_path, NULL, NULL);

	DefineCustomStringVariable("alipayplus.client_id",
							   "Client-Id assigned by Alipay+ to this acquirer.",
							   NULL,
							   &aps_client_id,
							   "",
							   PGC_SUSET, 0,
							   check_client_id, NULL, NULL);

	DefineCustomStringVariable("alipayplus.private_key_file",
							   "File holding the acquirer's RSA private key (PEM or DER, PKCS#8 or PKCS#1).",
							   "The file must not be readable by other operating system users.",
							   &aps_private_key_file,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("alipayplus.public_key_file",
							   "File holding Alipay+'s RSA public key, used to verify responses.",
							   NULL,
							   &aps_public_key_file,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.key_version",
							"keyVersion sent in the Signature header.",
							NULL,
							&aps_key_version,
							1, 1, INT_MAX,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.response_key_version",
							"keyVersion of Alipay+'s key in alipayplus.public_key_file.",
							"A response whose Signature header names another keyVersion is not accepted.",
							&aps_response_key_version,
							1, 1, INT_MAX,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("alipayplus.ca_file",
							   "CA bundle used to verify the gateway's certificate; empty means the system bundle.",
							   "Certificate verification is always on.",
							   &aps_ca_file,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("alipayplus.proxy",
							   "HTTPS proxy for gateway calls; empty means no proxy (environment variables are ignored).",
							   NULL,
							   &aps_proxy,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.connect_timeout_ms",
							"Time allowed to connect to the gateway, TLS handshake included.",
							NULL,
							&aps_connect_timeout_ms,
							3000, 1, 600000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.timeout_ms",
							"Time allowed for a whole cancelPayment or inquiryPayment call.",
							NULL,
							&aps_timeout_ms,
							10000, 1, 3600000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.max_concurrency",
							"Most cancelPayment calls one processor run keeps in flight at once.",
							"Each call in flight holds one kept-alive connection to the gateway.",
							&aps_max_concurrency,
							16, 1, APS_MAX_CONCURRENCY,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.max_attempts",
							"Attempts without a result after which a cancellation needs a human.",
							NULL,
							&aps_max_attempts,
							10, 1, 100000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.retry_base_ms",
							"First retry delay; it doubles with every attempt, with jitter.",
							NULL,
							&aps_retry_base_ms,
							5000, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("alipayplus.retry_max_ms",
							"Longest delay between two attempts.",
							NULL,
							&aps_retry_max_ms,
							900000, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);

	/*
	 * Read once, when the postmaster loads the library from
	 * shared_preload_libraries: it decides whether the worker exists.
	 * PostgreSQL refuses (FATAL) a PGC_POSTMASTER setting defined after
	 * start-up, so a library loaded later does not define it (a value in
	 * postgresql.conf then draws the WARNING of MarkGUCPrefixReserved).
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("alipayplus.database_name",
								   "Database whose queue the background worker serves; empty means no worker.",
								   "Takes effect only with alipayplus_cancel in shared_preload_libraries, at server start.",
								   &aps_database_name,
								   "",
								   PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
								   NULL, NULL, NULL);

	MarkGUCPrefixReserved("alipayplus");
}

/*
 * Raise a clear error when a setting the call needs is empty.
 */
void
aps_require_setting(const char *name, const char *value)
{
	if (value == NULL || value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("configuration parameter \"%s\" is not set", name),
				 errhint("A superuser must set it, for example with ALTER SYSTEM SET %s = '...'; followed by SELECT pg_reload_conf();",
						 name)));
}
