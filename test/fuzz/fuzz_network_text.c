/*-------------------------------------------------------------------------
 *
 * fuzz_network_text.c
 *	  libFuzzer harness: any bytes from the network (a response field, a
 *	  header value, a libcurl message) through aps_network_text()
 *	  (src/json.c), which makes them fit to be stored in the database.
 *
 * Each input runs under every database encoding of runtime.c; the result
 * must be short, valid in that encoding and free of control characters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "alipayplus_cancel.h"
#include "runtime.h"

int			LLVMFuzzerTestOneInput(const uint8 *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8 *data, size_t size)
{
	if (size > APS_MAX_RESPONSE_BYTES)
		return -1;
	for (int e = 0; e < APS_FUZZ_N_ENCODINGS; e++)
	{
		aps_fuzz_set_encoding(aps_fuzz_encodings[e]);
		aps_fuzz_check_network_text(aps_network_text((const char *) data, size));
		aps_fuzz_reset();
	}
	return 0;
}
