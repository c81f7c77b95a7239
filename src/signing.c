/*-------------------------------------------------------------------------
 *
 * signing.c
 *	  RSA-SHA256 signing and verification of Alipay+ messages, and the
 *	  per-backend cache of the parsed keys.
 *
 * The string signed is "POST <path>\n<client-id>.<time>.<body>"; the
 * Signature header is "algorithm=RSA256,keyVersion=<n>,signature=<s>" where
 * <s> is the percent-encoded standard base64 of the PKCS#1 v1.5 signature.
 *
 * Keys are read from the files named by alipayplus.private_key_file and
 * alipayplus.public_key_file, decoded with OpenSSL's decoders (PEM or DER,
 * PKCS#8, PKCS#1 or SubjectPublicKeyInfo, or bare base64 DER as Alipay+'s
 * developer center hands them out) and cached.  A cached key is reused
 * while the setting names the same file and the file's identity, size,
 * modification and status change times are unchanged.  Like git's "racy"
 * index entries, a file whose times are less than APS_RACY_SECONDS older
 * than the moment its contents were last read could have been rewritten
 * within the same clock tick: its contents are read again and compared by
 * SHA-256 on every use until that is no longer so.  Key material never
 * leaves this file: it is not logged, not returned and not quoted in error
 * messages.  Error messages name a key file by its path only to roles that
 * may read the setting (like SHOW); others get the setting's name, and the
 * path goes to the server log only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "catalog/pg_authid_d.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "alipayplus_cancel.h"

PG_FUNCTION_INFO_V1(alipayplus_signature);
PG_FUNCTION_INFO_V1(alipayplus_verify);

/* Key files larger than this are certainly not a single RSA key */
#define APS_MAX_KEY_FILE_BYTES	(64 * 1024)

/*
 * A key file changed less than this long before its contents were read is
 * "racy": a rewrite within the same timestamp tick would leave its size and
 * times unchanged, so its contents are compared on every use.
 */
#define APS_RACY_SECONDS	2

typedef struct ApsKeyCache
{
	char		path[MAXPGPATH];
	dev_t		dev;
	ino_t		ino;
	off_t		size;
	struct timespec mtime;
	struct timespec ctime;
	struct timespec read_at;	/* clock when the contents were last read */
	unsigned char digest[SHA256_DIGEST_LENGTH];	/* SHA-256 of the contents */
	EVP_PKEY   *key;
} ApsKeyCache;

static ApsKeyCache private_cache;
static ApsKeyCache public_cache;

/* A passphrase callback that refuses, so that OpenSSL never prompts */
static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/* The reason of the most recent OpenSSL error, or a fallback text */
static const char *
openssl_reason(void)
{
	unsigned long e = ERR_get_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return reason ? reason : "no further detail";
}

/*
 * Decode key bytes into an EVP_PKEY holding an RSA key, or return NULL.
 * "selection" is OSSL_KEYMGMT_SELECT_PRIVATE_KEY or _PUBLIC_KEY.  Bytes
 * without a PEM armour line are taken as base64 of the DER form.
 */
EVP_PKEY *
aps_decode_key(const char *data, size_t len, int selection)
{
	EVP_PKEY   *pkey = NULL;
	OSSL_DECODER_CTX *dctx;
	unsigned char *der = NULL;
	const unsigned char *in = (const unsigned char *) data;
	size_t		inlen = len;
	size_t		dersize = 0;

	if (memmem(data, len, "-----BEGIN", 10) == NULL)
	{
		/* bare base64: strip white space, then decode */
		char	   *clean = palloc(len + 1);
		size_t		n = 0;
		int			derlen;

		for (size_t i = 0; i < len; i++)
			if (!isspace((unsigned char) data[i]))
				clean[n++] = data[i];
		clean[n] = '\0';
		dersize = n / 4 * 3 + 3;
		der = palloc(dersize);
		derlen = (n > 0 && n % 4 == 0) ?
			EVP_DecodeBlock(der, (unsigned char *) clean, (int) n) : -1;
		/* EVP_DecodeBlock counts '=' padding as zero bytes */
		for (size_t i = n; derlen > 0 && i > 0 && clean[i - 1] == '='; i--)
			derlen--;
		explicit_bzero(clean, n);
		pfree(clean);
		if (derlen > 0)
		{
			in = der;
			inlen = (size_t) derlen;
		}
		/* else: perhaps raw DER; let the decoder judge the original bytes */
	}

	dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, NULL, NULL, "RSA", selection,
										 NULL, NULL);
	if (dctx != NULL)
	{
		OSSL_DECODER_CTX_set_pem_password_cb(dctx, no_passphrase, NULL);
		if (!OSSL_DECODER_from_data(dctx, &in, &inlen))
			pkey = NULL;
		OSSL_DECODER_CTX_free(dctx);
	}
	if (der != NULL)
	{
		explicit_bzero(der, dersize);
		pfree(der);
	}
	return pkey;
}

/*
 * Whether error messages may name key files by their paths: only when both
 * the current and the session user could SHOW the (GUC_SUPERUSER_ONLY)
 * settings, i.e. are superusers or have the privileges of
 * pg_read_all_settings.  The session user is asked too, so that a SECURITY
 * DEFINER function does not hand the paths to its caller.
 */
static bool
key_paths_visible(void)
{
	Oid			users[2];

	users[0] = GetUserId();
	users[1] = GetSessionUserId();
	for (size_t i = 0; i < lengthof(users); i++)
		if (!superuser_arg(users[i]) &&
			!has_privs_of_role(users[i], ROLE_PG_READ_ALL_SETTINGS))
			return false;
	return true;
}

/*
 * How an error message names a key file: by its path for roles that may
 * read the settings, else only by its setting (the caller then puts the
 * path in the server log with errdetail_log).
 */
static char *
key_file_label(const char *path, const char *name, bool visible)
{
	return visible ? psprintf("key file \"%s\" named by %s", path, name) :
		psprintf("the key file named by %s", name);
}

static bool
timespec_equal(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* Whether the file's newest time is less than APS_RACY_SECONDS before "at" */
static bool
file_is_racy(const struct timespec *mtime, const struct timespec *ctime,
			 const struct timespec *at)
{
	const struct timespec *newest = mtime;

	if (ctime->tv_sec > mtime->tv_sec ||
		(ctime->tv_sec == mtime->tv_sec && ctime->tv_nsec > mtime->tv_nsec))
		newest = ctime;
	if (newest->tv_sec + APS_RACY_SECONDS != at->tv_sec)
		return newest->tv_sec + APS_RACY_SECONDS > at->tv_sec;
	return newest->tv_nsec >= at->tv_nsec;
}

/*
 * Read a key file of (about) "size" bytes into palloc'd memory; *nread is
 * set to the number of bytes read.  The caller must zero and free it.
 */
static char *
read_key_file(const char *name, const char *path, off_t size, size_t *nread)
{
	FILE	   *fp;
	char	   *buf;

	fp = AllocateFile(path, PG_BINARY_R);
	if (fp == NULL)
	{
		int			save_errno = errno;
		bool		visible = key_paths_visible();
		char	   *label = key_file_label(path, name, visible);

		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open %s: %m", label),
				 visible ? 0 : errdetail_log("The file is \"%s\".", path)));
	}
	buf = palloc(size + 1);
	*nread = fread(buf, 1, size, fp);
	FreeFile(fp);
	buf[*nread] = '\0';
	return buf;
}

/*
 * Return the key named by setting "name" (value "path"), from the cache
 * when the file has not changed, else freshly read and decoded.
 */
static EVP_PKEY *
cached_key(ApsKeyCache *cache, const char *name, const char *path,
		   bool is_private)
{
	struct stat st;
	struct timespec now;
	char	   *buf;
	size_t		nread;
	unsigned char digest[SHA256_DIGEST_LENGTH];
	bool		same_file;
	EVP_PKEY   *pkey;

	aps_require_setting(name, path);

	/* the moment the contents are read, at the latest: taken before stat */
	clock_gettime(CLOCK_REALTIME, &now);
	if (stat(path, &st) != 0)
	{
		int			save_errno = errno;
		bool		visible = key_paths_visible();
		char	   *label = key_file_label(path, name, visible);

		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not access %s: %m", label),
				 visible ? 0 : errdetail_log("The file is \"%s\".", path)));
	}
	if (!S_ISREG(st.st_mode))
	{
		bool		visible = key_paths_visible();

		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("%s is not a regular file", key_file_label(path, name, visible)),
				 visible ? 0 : errdetail_log("The file is \"%s\".", path)));
	}

	/* checked on every use, so that a chmod takes effect at once */
	if (is_private && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0 &&
		(st.st_uid != 0 || (st.st_mode & S_IRWXO) != 0))
	{
		bool		visible = key_paths_visible();

		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 visible ?
				 errmsg("private key file \"%s\" has group or world access",
						path) :
				 errmsg("the private key file named by %s has group or world access",
						name),
				 errdetail("File must have permissions u=rw (0600) or less if owned by the database user, or permissions u=rw,g=r (0640) or less if owned by root."),
				 visible ? 0 : errdetail_log("The file is \"%s\". File must have permissions u=rw (0600) or less if owned by the database user, or permissions u=rw,g=r (0640) or less if owned by root.",
											 path),
				 errhint("Run chmod 0600 on the file.")));
	}

	same_file = cache->key != NULL &&
		strcmp(cache->path, path) == 0 &&
		cache->dev == st.st_dev && cache->ino == st.st_ino &&
		cache->size == st.st_size &&
		timespec_equal(&cache->mtime, &st.st_mtim) &&
		timespec_equal(&cache->ctime, &st.st_ctim);
	if (same_file && !file_is_racy(&cache->mtime, &cache->ctime, &cache->read_at))
		return cache->key;

	if (st.st_size <= 0 || st.st_size > APS_MAX_KEY_FILE_BYTES)
	{
		bool		visible = key_paths_visible();

		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("%s is empty or too large to be a key",
						key_file_label(path, name, visible)),
				 visible ? 0 : errdetail_log("The file is \"%s\".", path)));
	}

	buf = read_key_file(name, path, st.st_size, &nread);
	if (EVP_Digest(buf, nread, digest, NULL, EVP_sha256(), NULL) != 1)
	{
		explicit_bzero(buf, nread);
		pfree(buf);
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not compute a SHA-256 digest"),
				 errdetail_internal("OpenSSL: %s", openssl_reason())));
	}

	/*
	 * Racy or touched, but the contents are what was decoded: keep the key,
	 * and remember the file as it is now.
	 */
	if (cache->key != NULL && strcmp(cache->path, path) == 0 &&
		memcmp(digest, cache->digest, sizeof(digest)) == 0)
	{
		explicit_bzero(buf, nread);
		pfree(buf);
		cache->dev = st.st_dev;
		cache->ino = st.st_ino;
		cache->size = st.st_size;
		cache->mtime = st.st_mtim;
		cache->ctime = st.st_ctim;
		cache->read_at = now;
		return cache->key;
	}

	/* the file or the setting changed: forget the old key first */
	if (cache->key != NULL)
	{
		EVP_PKEY_free(cache->key);
		cache->key = NULL;
	}

	ERR_clear_error();
	pkey = aps_decode_key(buf, nread,
						  is_private ? OSSL_KEYMGMT_SELECT_PRIVATE_KEY :
						  OSSL_KEYMGMT_SELECT_PUBLIC_KEY);
	explicit_bzero(buf, nread);
	pfree(buf);

	if (pkey == NULL)
	{
		const char *reason = openssl_reason();
		bool		visible = key_paths_visible();

		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("%s does not hold a usable RSA %s key",
						key_file_label(path, name, visible),
						is_private ? "private" : "public"),
				 errdetail_internal("OpenSSL: %s", reason),
				 visible ? 0 : errdetail_log("The file is \"%s\"; OpenSSL: %s",
											 path, reason),
				 errhint("Give a PEM or DER file: PKCS#8 or PKCS#1 for a private key, SubjectPublicKeyInfo for a public key; encrypted keys are not supported.")));
	}

	strlcpy(cache->path, path, sizeof(cache->path));
	cache->dev = st.st_dev;
	cache->ino = st.st_ino;
	cache->size = st.st_size;
	cache->mtime = st.st_mtim;
	cache->ctime = st.st_ctim;
	cache->read_at = now;
	memcpy(cache->digest, digest, sizeof(digest));
	cache->key = pkey;
	return pkey;
}

EVP_PKEY *
aps_private_key(void)
{
	return cached_key(&private_cache, "alipayplus.private_key_file",
					  aps_private_key_file, true);
}

EVP_PKEY *
aps_public_key(void)
{
	return cached_key(&public_cache, "alipayplus.public_key_file",
					  aps_public_key_file, false);
}

/*
 * Build the content to sign or verify:
 *	"POST" SP path LF client-id "." time "." body
 */
char *
aps_content_to_sign(const char *path, const char *client_id,
					const char *time, const char *body, size_t body_len,
					size_t *content_len)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "POST %s\n%s.%s.", path, client_id, time);
	appendBinaryStringInfo(&buf, body, (int) body_len);
	*content_len = buf.len;
	return buf.data;
}

/*
 * Sign content with RSASSA-PKCS1-v1_5 / SHA-256 and return the standard
 * base64 text of the signature, without line breaks.
 */
char *
aps_sign(EVP_PKEY *key, const char *content, size_t len)
{
	size_t		siglen = (size_t) EVP_PKEY_get_size(key);
	unsigned char *sig = palloc(siglen);
	char	   *b64 = palloc(4 * ((siglen + 2) / 3) + 1);
	EVP_MD_CTX *ctx;
	bool		ok;

	/* no palloc or ereport while the OpenSSL context is alive */
	ERR_clear_error();
	ctx = EVP_MD_CTX_new();
	ok = ctx != NULL &&
		EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
		EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *) content,
					   len) == 1;
	EVP_MD_CTX_free(ctx);

	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not sign the request with the private key"),
				 errdetail_internal("OpenSSL: %s", openssl_reason())));

	EVP_EncodeBlock((unsigned char *) b64, sig, (int) siglen);
	pfree(sig);
	return b64;
}

/*
 * Percent-encode (curl's escaping: everything but A-Z a-z 0-9 - . _ ~,
 * uppercase hex) into palloc'd memory.
 */
static char *
percent_encode(const char *s)
{
	char	   *esc = curl_easy_escape(NULL, s, (int) strlen(s));
	char	   *volatile result = NULL;

	if (esc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	PG_TRY();
	{
		result = pstrdup(esc);
	}
	PG_FINALLY();
	{
		curl_free(esc);
	}
	PG_END_TRY();
	return result;
}

/* "algorithm=RSA256,keyVersion=<n>,signature=<percent-encoded base64>" */
char *
aps_signature_header(const char *base64_signature)
{
	char	   *enc = percent_encode(base64_signature);

	return psprintf("algorithm=RSA256,keyVersion=%d,signature=%s",
					aps_key_version, enc);
}

/*
 * Find the "name = value" field in s[0..len): a name of letters, '=', and a
 * value that is not empty and not only '=' signs, with blanks allowed
 * around each.  A bare base64 signature never is such a field: its only
 * '=' signs are the padding at its end (percent-encoded, it has none).
 * Returns false if s is not a field; else sets the trimmed name and value.
 */
static bool
header_field(const char *s, size_t len, const char **name, size_t *namelen,
			 const char **value, size_t *valuelen)
{
	const char *end = s + len;
	const char *eq = memchr(s, '=', len);
	const char *n = s;
	const char *ne;
	const char *v;
	const char *ve = end;
	bool		only_padding = true;

	if (eq == NULL)
		return false;
	while (n < eq && isspace((unsigned char) *n))
		n++;
	ne = eq;
	while (ne > n && isspace((unsigned char) ne[-1]))
		ne--;
	if (ne == n)
		return false;
	for (const char *p = n; p < ne; p++)
		if (!isalpha((unsigned char) *p))
			return false;

	v = eq + 1;
	while (v < end && isspace((unsigned char) *v))
		v++;
	while (ve > v && isspace((unsigned char) ve[-1]))
		ve--;
	for (const char *p = v; p < ve; p++)
		if (*p != '=')
			only_padding = false;
	if (only_padding)
		return false;

	*name = n;
	*namelen = ne - n;
	*value = v;
	*valuelen = ve - v;
	return true;
}

static bool
name_is(const char *name, size_t namelen, const char *word)
{
	return namelen == strlen(word) && pg_strncasecmp(name, word, namelen) == 0;
}

/* Whether text is a decimal number equal to n (leading zeros allowed) */
static bool
number_is(const char *text, size_t len, int n)
{
	int64		v = 0;

	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (!isdigit((unsigned char) text[i]))
			return false;
		v = v * 10 + (text[i] - '0');
		if (v > INT_MAX)
			return false;
	}
	return v == n;
}

/*
 * Take the encoded signature out of a Signature header value.  The value
 * is a comma-separated list of name=value fields, with field names in any
 * case and blanks allowed around '=' and ','; a text that is a single
 * bare value (no comma, not a field) is taken as the encoded signature
 * itself.  Returns NULL if no signature can be accepted: no signature
 * field, a field given twice, a list element that is not a field, an
 * algorithm other than RSA256, or a keyVersion other than
 * alipayplus.response_key_version (the version of the key we hold).
 */
static char *
signature_value(const char *header)
{
	size_t		len = strlen(header);
	const char *name;
	const char *value;
	size_t		namelen;
	size_t		valuelen;
	const char *sig = NULL;
	size_t		siglen = 0;
	bool		saw_algorithm = false;
	bool		saw_key_version = false;
	const char *item;

	if (memchr(header, ',', len) == NULL &&
		!header_field(header, len, &name, &namelen, &value, &valuelen))
	{
		const char *s = header;
		const char *e = header + len;

		while (s < e && isspace((unsigned char) *s))
			s++;
		while (e > s && isspace((unsigned char) e[-1]))
			e--;
		return e > s ? pnstrdup(s, e - s) : NULL;
	}

	for (item = header; item != NULL;)
	{
		const char *comma = strchr(item, ',');
		size_t		itemlen = comma ? (size_t) (comma - item) : strlen(item);
		bool		blank = true;

		for (size_t i = 0; i < itemlen; i++)
			if (!isspace((unsigned char) item[i]))
				blank = false;
		if (!blank)
		{
			if (!header_field(item, itemlen, &name, &namelen, &value, &valuelen))
				return NULL;
			if (name_is(name, namelen, "signature"))
			{
				if (sig != NULL)
					return NULL;
				sig = value;
				siglen = valuelen;
			}
			else if (name_is(name, namelen, "algorithm"))
			{
				if (saw_algorithm || !name_is(value, valuelen, "RSA256"))
					return NULL;
				saw_algorithm = true;
			}
			else if (name_is(name, namelen, "keyVersion"))
			{
				if (saw_key_version ||
					!number_is(value, valuelen, aps_response_key_version))
					return NULL;
				saw_key_version = true;
			}
		}
		item = comma ? comma + 1 : NULL;
	}
	return sig ? pnstrdup(sig, siglen) : NULL;
}

/*
 * Turn the encoded signature into raw bytes: percent-decode (a '+' stays a
 * '+'), then base64-decode, accepting the URL-safe alphabet and missing
 * padding.  Returns false if it is not decodable.
 */
static bool
decode_signature(const char *encoded, unsigned char **raw, size_t *rawlen)
{
	int			declen = 0;
	char	   *dec = curl_easy_unescape(NULL, encoded, 0, &declen);
	char	   *b64;
	int			n = 0;
	int			pad = 0;
	int			len;

	if (dec == NULL)
		return false;
	/* copy into palloc'd memory, normalised, before anything can error */
	b64 = palloc(declen + 4);
	for (int i = 0; i < declen; i++)
	{
		char		c = dec[i];

		if (c == '-')
			c = '+';
		else if (c == '_')
			c = '/';
		else if (isspace((unsigned char) c))
			continue;
		b64[n++] = c;
	}
	curl_free(dec);

	while (n % 4 != 0)
		b64[n++] = '=';
	b64[n] = '\0';
	if (n == 0)
		return false;
	for (int i = n - 1; i >= 0 && b64[i] == '='; i--)
		pad++;
	if (pad > 2)
		return false;

	*raw = palloc(n / 4 * 3);
	len = EVP_DecodeBlock(*raw, (unsigned char *) b64, n);
	if (len < 0)
		return false;
	*rawlen = (size_t) (len - pad);
	return true;
}

/*
 * Verify an encoded signature (a whole Signature header value, or only
 * its signature part) over content with the given public key.
 */
bool
aps_verify_signature(EVP_PKEY *key, const char *content, size_t len,
					 const char *signature)
{
	char	   *encoded = signature_value(signature);
	unsigned char *raw;
	size_t		rawlen;
	EVP_MD_CTX *ctx;
	bool		ok;

	if (encoded == NULL || !decode_signature(encoded, &raw, &rawlen))
		return false;

	/* no palloc or ereport while the OpenSSL context is alive */
	ctx = EVP_MD_CTX_new();
	ok = ctx != NULL &&
		EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
		EVP_DigestVerify(ctx, raw, rawlen, (const unsigned char *) content,
						 len) == 1;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return ok;
}

/*
 * alipayplus_signature(path, client_id, request_time, body) returns the
 * complete Signature header value, signed with the configured key.
 */
Datum
alipayplus_signature(PG_FUNCTION_ARGS)
{
	text	   *path = PG_GETARG_TEXT_PP(0);
	text	   *client_id = PG_GETARG_TEXT_PP(1);
	text	   *request_time = PG_GETARG_TEXT_PP(2);
	text	   *body = PG_GETARG_TEXT_PP(3);
	EVP_PKEY   *key = aps_private_key();
	char	   *content;
	size_t		content_len;
	char	   *sig;

	content = aps_content_to_sign(text_to_cstring(path),
								  text_to_cstring(client_id),
								  text_to_cstring(request_time),
								  VARDATA_ANY(body),
								  VARSIZE_ANY_EXHDR(body),
								  &content_len);
	sig = aps_sign(key, content, content_len);
	PG_RETURN_TEXT_P(cstring_to_text(aps_signature_header(sig)));
}

/*
 * alipayplus_verify(path, client_id, response_time, body, signature,
 * public_key DEFAULT NULL) returns whether signature is a valid signature
 * of the message.  public_key is PEM text; NULL means the configured
 * Alipay+ public key.
 */
Datum
alipayplus_verify(PG_FUNCTION_ARGS)
{
	EVP_PKEY   *key;
	EVP_PKEY   *volatile own_key = NULL;
	text	   *body;
	char	   *content;
	size_t		content_len;
	volatile bool ok = false;

	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			PG_RETURN_NULL();
	body = PG_GETARG_TEXT_PP(3);

	if (PG_ARGISNULL(5))
		key = aps_public_key();
	else
	{
		text	   *pem = PG_GETARG_TEXT_PP(5);

		ERR_clear_error();
		own_key = aps_decode_key(VARDATA_ANY(pem), VARSIZE_ANY_EXHDR(pem),
								 OSSL_KEYMGMT_SELECT_PUBLIC_KEY);
		if (own_key == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("public_key is not an RSA public key"),
					 errdetail_internal("OpenSSL: %s", openssl_reason()),
					 errhint("Pass PEM text beginning with \"-----BEGIN PUBLIC KEY-----\".")));
		key = own_key;
	}

	PG_TRY();
	{
		content = aps_content_to_sign(text_to_cstring(PG_GETARG_TEXT_PP(0)),
									  text_to_cstring(PG_GETARG_TEXT_PP(1)),
									  text_to_cstring(PG_GETARG_TEXT_PP(2)),
									  VARDATA_ANY(body),
									  VARSIZE_ANY_EXHDR(body),
									  &content_len);
		ok = aps_verify_signature(key, content, content_len,
								  text_to_cstring(PG_GETARG_TEXT_PP(4)));
	}
	PG_FINALLY();
	{
		if (own_key != NULL)
			EVP_PKEY_free(own_key);
	}
	PG_END_TRY();

	PG_RETURN_BOOL(ok);
}
