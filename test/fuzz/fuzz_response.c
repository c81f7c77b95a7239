/*-------------------------------------------------------------------------
 *
 * fuzz_response.c
 *	  libFuzzer harness: a cancelPayment or inquiryPayment response body,
 *	  as the gateway sends it, through aps_parse_result() (src/json.c) and
 *	  the fields it picks out through aps_network_text(), as cancel.c
 *	  stores them.
 *
 * Each input runs under every database encoding of runtime.c, parsed both
 * ways (without and with the inquiry's payment fields).  A parse must
 * either succeed with a status S, F or U and a code (and, when it found a
 * paymentResult, a status and code there too), or fail with a problem
 * text; it must never raise an error.
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
	for (int i = 0; i < APS_FUZZ_N_ENCODINGS * 2; i++)
	{
		ApsResult	r;
		char	   *problem = NULL;
		bool		payment_fields = i % 2 == 1;

		aps_fuzz_set_encoding(aps_fuzz_encodings[i / 2]);
		if (aps_parse_result(body, size, payment_fields, &r, &problem))
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
			if (!payment_fields && (r.saw_payment_result || r.payment_id != NULL ||
									r.payment_time != NULL || r.amount_value != NULL))
				aps_fuzz_fail("a cancelPayment parse picked out payment fields");
			if (r.saw_payment_result &&
				(r.payment_status == NULL || strlen(r.payment_status) != 1 ||
				 strchr("SFU", r.payment_status[0]) == NULL ||
				 r.payment_code == NULL || r.payment_code[0] == '\0'))
				aps_fuzz_fail("a parsed paymentResult has no status S, F or U, or no code");
			check_field(r.payment_status);
			check_field(r.payment_code);
			check_field(r.payment_message);
			check_field(r.payment_id);
			check_field(r.payment_request_id);
			check_field(r.payment_time);
			check_field(r.amount_currency);
			check_field(r.amount_value);
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
