/*-------------------------------------------------------------------------
 *
 * fuzz_signature.c
 *	  libFuzzer harness: a Signature response header value through
 *	  aps_verify_signature() (src/signing.c), which takes the signature out
 *	  of the header's fields, percent-decodes and base64-decodes it and
 *	  verifies it with OpenSSL.
 *
 * The signed content and the public key are test vector B's signed S
 * response (test/vectors/), so the seed header verifies and mutations of
 * it reach every step.  The header value is handed over as libcurl hands
 * it to transport.c: a C string, ending at the first NUL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/core_dispatch.h>
#include <openssl/err.h>

#include "alipayplus_cancel.h"
#include "runtime.h"

#ifndef APS_FUZZ_VECTORS
#error "APS_FUZZ_VECTORS must name the test/vectors folder"
#endif

/* test vector B, b2_response (test/vectors/vector_b.json) */
#define B2_PATH "/aps/api/v1/payments/cancelPayment"
#define B2_CLIENT_ID "SANDBOX_5X00000000000000"
#define B2_TIME "2025-01-15T10:30:01+08:00"
#define B2_BODY "{\"acquirerId\":\"1022188000000000001\",\"pspId\":\"1022172000000000001\",\"result\":{\"resultCode\":\"SUCCESS\",\"resultMessage\":\"success.\",\"resultStatus\":\"S\"}}"
#define B2_SIGNATURE "OmLFosr9Z8Y2vv0qyMgvmgJJHm8z0Gj%2FgNEJl3STcq%2FLdqkE7KQqWNgEwJr14XZuO9ics3P0nE1LJJsGCBX36DFCmQd5AfnIB00qQ%2FQ92LhenHdQ3kk%2FhCJwm0l7o3%2BIcSlFwdImfZSJCVyh%2BkyJGH1aDD%2BbEESeDcdC8Uo57y3kJjLi1HcBulY2ytekJOfOY8OaPqCbhGKXc%2FTlBWROSUgFN8M6hTPEZ3s1SzjW%2BwlpEPyLhr5QCjy0JOX77s3MgUS284KtaqwxHlWTbl5h5HnNOr%2B1%2BYQiDrST8aqc5YS7LOuJf4Gbv14tm5H5B9UXFacxUrev%2BtM4Jwtt2O%2B9NQ%3D%3D"

int			LLVMFuzzerInitialize(int *argc, char ***argv);
int			LLVMFuzzerTestOneInput(const uint8 *data, size_t size);

static EVP_PKEY *public_key;
static char *content;
static size_t content_len;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	FILE	   *f = fopen(APS_FUZZ_VECTORS "/vector_b_public.pem", "rb");
	char		pem[4096];
	size_t		n;
	size_t		len;
	char	   *c;

	if (f == NULL)
		aps_fuzz_fail("cannot open " APS_FUZZ_VECTORS "/vector_b_public.pem");
	n = fread(pem, 1, sizeof(pem), f);
	fclose(f);
	public_key = aps_decode_key(pem, n, OSSL_KEYMGMT_SELECT_PUBLIC_KEY);
	if (public_key == NULL)
		aps_fuzz_fail("test vector B's public key does not decode");

	/* kept for the whole run: copied out of the per-input memory */
	c = aps_content_to_sign(B2_PATH, B2_CLIENT_ID, B2_TIME, B2_BODY,
							strlen(B2_BODY), &len);
	content = malloc(len);
	memcpy(content, c, len);
	content_len = len;
	aps_fuzz_reset();

	if (!aps_verify_signature(public_key, content, content_len,
							  "algorithm=RSA256,keyVersion=1,signature=" B2_SIGNATURE))
		aps_fuzz_fail("test vector B's response signature does not verify");
	aps_fuzz_reset();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8 *data, size_t size)
{
	char	   *header = malloc(size + 1);

	memcpy(header, data, size);
	header[size] = '\0';
	/* nothing here depends on the database encoding */
	(void) aps_verify_signature(public_key, content, content_len, header);
	aps_fuzz_reset();
	free(header);
	if (ERR_peek_error() != 0)
		aps_fuzz_fail("aps_verify_signature() left errors on OpenSSL's queue");
	return 0;
}
