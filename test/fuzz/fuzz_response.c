/*-------------------------------------------------------------------------
 *
 * fuzz_response.c
 *	  libFuzzer harness: a cancelPayment response body, as the gateway
 *	  sends it, through aps_parse_result() (src/json.c) and the fields it
 *	  picks out through aps_network_text(), as cancel.c stores them.
 *
 * Each input runs under every database encoding of runtime.c.  A parse
 * must either succeed with a status S, F or U and a code, or fail with a
 * problem text; it must never raise an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "alipayplus_cancel.h"
#include "runtime.h"

int			LLVMFuzzerTestOneInput(const uint8 *data, size_t size);

static void
check_field(const char *value)
{
	if (value != NULL)
		aps_fuzz_check_network_text(aps_network_text(value, strlen(value)));
}

int
LLVMFuzzerTestOneInput(const uint8 *data, size_t size)
{
	/* cancel.c passes the body, NULL when none came, and its length */
	const char *body = size > 0 ? (const char *) data : NULL;

	if (size > APS_MAX_RESPONSE_BYTES)
		return -1;
	for (int e = 0; e < APS_FUZZ_N_ENCODINGS; e++)
	{
		ApsResult	r;
		char	   *problem = NULL;

		aps_fuzz_set_encoding(aps_fuzz_encodings[e]);
		if (aps_parse_result(body, size, &r, &problem))
		{
			if (problem != NULL)
				aps_fuzz_fail("a parsed response has a problem text");
			if (r.result_status == NULL || strlen(r.result_status) != 1 ||
				strchr("SFU", r.result_status[0]) == NULL)
				aps_fuzz_fail("a parsed response has no status S, F or U");
			if (r.result_code == NULL || r.result_code[0] == '\0')
				aps_fuzz_fail("a parsed response has no result code");
			check_field(r.result_code);
			check_field(r.result_message);
			check_field(r.acquirer_id);
			check_field(r.psp_id);
		}
		else
		{
			if (problem == NULL)
				aps_fuzz_fail("a refused response has no problem text");
			check_field(problem);
		}
		aps_fuzz_reset();
	}
	return 0;
}
