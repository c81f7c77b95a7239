/*-------------------------------------------------------------------------
 *
 * fuzz_key.c
 *	  libFuzzer harness: the bytes of a key file through aps_decode_key()
 *	  (src/signing.c): PEM or DER, PKCS#8, PKCS#1 or SubjectPublicKeyInfo,
 *	  or bare base64 of DER, decoded with OpenSSL.
 *
 * Each input is decoded as a private and as a public key, as signing.c
 * does for alipayplus.private_key_file and alipayplus.public_key_file (and
 * alipayplus_verify()'s public_key argument).  What is decoded must be an
 * RSA key; whatever OpenSSL allocated must be freed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/core_dispatch.h>
#include <openssl/err.h>

#include "alipayplus_cancel.h"
#include "runtime.h"

/* signing.c's APS_MAX_KEY_FILE_BYTES: larger files are refused unread */
#define MAX_KEY_FILE_BYTES (64 * 1024)

int			LLVMFuzzerTestOneInput(const uint8 *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8 *data, size_t size)
{
	static const int selections[] = {
		OSSL_KEYMGMT_SELECT_PRIVATE_KEY, OSSL_KEYMGMT_SELECT_PUBLIC_KEY
	};

	if (size == 0 || size > MAX_KEY_FILE_BYTES)
		return -1;
	for (size_t i = 0; i < lengthof(selections); i++)
	{
		EVP_PKEY   *pkey;

		/* as signing.c: a clean error queue before, read and cleared after */
		ERR_clear_error();
		pkey = aps_decode_key((const char *) data, size, selections[i]);
		if (pkey != NULL)
		{
			if (!EVP_PKEY_is_a(pkey, "RSA"))
				aps_fuzz_fail("aps_decode_key() returned a key that is not RSA");
			EVP_PKEY_free(pkey);
		}
		ERR_clear_error();
		aps_fuzz_reset();
	}
	return 0;
}
