/*-------------------------------------------------------------------------
 *
 * fuzz_body.c
 *	  libFuzzer harness: response body bytes as libcurl hands them, piece
 *	  by piece, to write_body() in src/transport.c, which collects them
 *	  under the APS_MAX_RESPONSE_BYTES cap.
 *
 * write_body() is static, so this file includes src/transport.c itself
 * (no copy, no change to it).  scripts/fuzz.sh instruments only
 * write_body() and this harness for coverage (fuzz_body.allowlist) and
 * links with unused sections dropped, so the rest of transport.c needs no
 * backend.  The
 * input is a list of pieces: a byte below 0x80 gives the length of a
 * piece taken from the input that follows; a byte from 0x80 up and the
 * next give a count of 64-byte blocks, filled with the byte after them,
 * so that pieces reach the cap.  After every piece the collected body
 * must be exactly what was handed over, NUL-terminated and within its
 * buffer, or the piece refused as too large, and then nothing more is
 * handed over (libcurl ends the transfer).
 *
 *-------------------------------------------------------------------------
 */
#include "transport.c"

#include "runtime.h"

int			LLVMFuzzerTestOneInput(const uint8 *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8 *data, size_t size)
{
	/* the largest piece: 0x7fff blocks of 64 bytes */
	static const size_t max_piece = 0x7fff * 64;
	static char *expect = NULL;
	static char *piece = NULL;
	ApsHttpExchange *ex;
	size_t		expect_len = 0;
	size_t		i = 0;

	if (expect == NULL)
	{
		expect = malloc(APS_MAX_RESPONSE_BYTES + 1);
		piece = malloc(max_piece);
	}
	/* like the engine's, from an allocation: write_body allocates beside it */
	ex = palloc0(sizeof(ApsHttpExchange));
	while (i < size)
	{
		size_t		n;
		size_t		got;

		if (data[i] < 0x80)
		{
			n = Min((size_t) data[i], size - i - 1);
			memcpy(piece, data + i + 1, n);
			i += 1 + n;
		}
		else
		{
			if (i + 2 >= size)
				break;
			n = ((size_t) (data[i] & 0x7f) << 8 | data[i + 1]) * 64;
			memset(piece, data[i + 2], n);
			i += 3;
		}

		got = write_body(piece, 1, n, ex);
		if (expect_len + n > APS_MAX_RESPONSE_BYTES)
		{
			if (got != 0 || !ex->response_too_large)
				aps_fuzz_fail("a piece past the cap was not refused as too large");
			if (ex->response_len != expect_len)
				aps_fuzz_fail("a refused piece changed the body");
			break;
		}
		if (got != n || ex->response_too_large || ex->response_no_memory)
			aps_fuzz_fail("a piece within the cap was refused");
		memcpy(expect + expect_len, piece, n);
		expect_len += n;
		if (ex->response_len != expect_len ||
			(expect_len > 0 &&
			 (ex->response == NULL ||
			  ex->response_cap < expect_len + 1 ||
			  ex->response_cap > APS_MAX_RESPONSE_BYTES + 1 ||
			  ex->response[expect_len] != '\0' ||
			  memcmp(ex->response, expect, expect_len) != 0)))
			aps_fuzz_fail("the collected body is not what was handed over");
	}
	aps_fuzz_reset();
	return 0;
}
