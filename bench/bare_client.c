/*-------------------------------------------------------------------------
 *
 * bare_client.c
 *	  The benchmark's ceiling: signed cancelPayment calls with nothing but
 *	  libcurl and OpenSSL, no database.
 *
 * It does per call what the extension does, minus the ledger: build the
 * body, sign "POST <path>\n<client-id>.<time>.<body>" with RSA-SHA256,
 * send it with the Alipay+ headers, and verify the response signature
 * with the gateway's public key.  Calls run through one curl multi handle
 * with up to CONCURRENCY in flight, each easy handle keeping its
 * connection alive.  Prints one line: calls, verified S answers, seconds,
 * calls per second.
 *
 *	  bare_client GATEWAY_URL CLIENT_ID PRIVATE_KEY PUBLIC_KEY CA_FILE ID_PREFIX CALLS CONCURRENCY
 *
 * GATEWAY_URL is https://host:port, like alipayplus.gateway_url; the path
 * is the cancelPayment path.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#define PATH "/aps/api/v1/payments/cancelPayment"
#define MAX_BODY (64 * 1024)

typedef struct Call
{
	CURL	   *easy;
	struct curl_slist *headers;
	char		body[256];
	char		response[MAX_BODY];
	size_t		response_len;
	char		signature[1024];
	char		response_time[64];
	char		client_id[128];
	int			busy;
} Call;

static EVP_PKEY *private_key;
static EVP_PKEY *public_key;
static const char *client_id;

static EVP_PKEY *
load_key(const char *file, int private)
{
	FILE	   *f = fopen(file, "r");
	EVP_PKEY   *k;

	if (f == NULL)
	{
		perror(file);
		exit(2);
	}
	k = private ? PEM_read_PrivateKey(f, NULL, NULL, NULL) :
		PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (k == NULL)
	{
		fprintf(stderr, "%s: not a PEM key\n", file);
		exit(2);
	}
	return k;
}

static size_t
on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Call	   *c = userdata;
	size_t		n = size * nmemb;

	if (c->response_len + n >= MAX_BODY)
		return 0;
	memcpy(c->response + c->response_len, ptr, n);
	c->response_len += n;
	c->response[c->response_len] = '\0';
	return n;
}

/* keep the three response headers the verification needs */
static size_t
on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Call	   *c = userdata;
	size_t		n = size * nmemb;
	char		line[1200];
	char	   *colon;
	char	   *v;
	size_t		len = n < sizeof(line) - 1 ? n : sizeof(line) - 1;

	memcpy(line, ptr, len);
	line[len] = '\0';
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		line[--len] = '\0';
	colon = strchr(line, ':');
	if (colon == NULL)
		return n;
	*colon = '\0';
	for (v = colon + 1; *v == ' '; v++)
		;
	if (strcasecmp(line, "Signature") == 0)
		snprintf(c->signature, sizeof(c->signature), "%s", v);
	else if (strcasecmp(line, "Response-Time") == 0)
		snprintf(c->response_time, sizeof(c->response_time), "%s", v);
	else if (strcasecmp(line, "Client-Id") == 0)
		snprintf(c->client_id, sizeof(c->client_id), "%s", v);
	return n;
}

static void
sign_into(const char *content, size_t len, char *out, size_t outlen)
{
	unsigned char sig[1024];
	size_t		siglen = sizeof(sig);
	char		b64[2048];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char	   *esc;

	if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, private_key) != 1 ||
		EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *) content, len) != 1)
	{
		fprintf(stderr, "signing failed\n");
		exit(2);
	}
	EVP_MD_CTX_free(ctx);
	EVP_EncodeBlock((unsigned char *) b64, sig, (int) siglen);
	esc = curl_easy_escape(NULL, b64, 0);
	snprintf(out, outlen, "algorithm=RSA256,keyVersion=1,signature=%s", esc);
	curl_free(esc);
}

static int
verified_s(Call *c)
{
	char		content[MAX_BODY + 512];
	const char *p = strstr(c->signature, "signature=");
	char	   *raw;
	int			rawlen;
	unsigned char sig[1024];
	int			siglen;
	int			ok;
	EVP_MD_CTX *ctx;
	int			n;

	if (p == NULL || c->response_time[0] == '\0' ||
		strcmp(c->client_id, client_id) != 0)
		return 0;
	raw = curl_easy_unescape(NULL, p + 10, 0, &rawlen);
	siglen = EVP_DecodeBlock(sig, (unsigned char *) raw, rawlen);
	while (rawlen > 0 && raw[rawlen - 1] == '=')
	{
		siglen--;
		rawlen--;
	}
	curl_free(raw);
	n = snprintf(content, sizeof(content), "POST %s\n%s.%s.%s", PATH,
				 c->client_id, c->response_time, c->response);
	ctx = EVP_MD_CTX_new();
	ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, public_key) == 1 &&
		EVP_DigestVerify(ctx, sig, siglen, (unsigned char *) content, n) == 1;
	EVP_MD_CTX_free(ctx);
	return ok && strstr(c->response, "\"resultStatus\":\"S\"") != NULL;
}

static void
start(CURLM *multi, Call *c, const char *url, const char *ca,
	  const char *prefix, long n)
{
	char		now[64];
	char		content[1024];
	char		sig[2048];
	char		line[2200];
	time_t		t = time(NULL) + 8 * 3600;
	struct tm	tm;
	int			len;

	gmtime_r(&t, &tm);
	strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%S+08:00", &tm);
	snprintf(c->body, sizeof(c->body), "{\"paymentRequestId\":\"%s-%ld\"}", prefix, n);
	len = snprintf(content, sizeof(content), "POST %s\n%s.%s.%s", PATH,
				   client_id, now, c->body);
	sign_into(content, len, sig, sizeof(sig));

	curl_slist_free_all(c->headers);
	c->headers = curl_slist_append(NULL, "Content-Type: application/json; charset=UTF-8");
	snprintf(line, sizeof(line), "Client-Id: %s", client_id);
	c->headers = curl_slist_append(c->headers, line);
	snprintf(line, sizeof(line), "Request-Time: %s", now);
	c->headers = curl_slist_append(c->headers, line);
	snprintf(line, sizeof(line), "Signature: %s", sig);
	c->headers = curl_slist_append(c->headers, line);
	c->headers = curl_slist_append(c->headers, "Expect:");

	c->response_len = 0;
	c->response[0] = c->signature[0] = c->response_time[0] = c->client_id[0] = '\0';
	curl_easy_setopt(c->easy, CURLOPT_URL, url);
	curl_easy_setopt(c->easy, CURLOPT_CAINFO, ca);
	curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
	curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
	curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(c->easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
	curl_multi_add_handle(multi, c->easy);
	c->busy = 1;
}

int
main(int argc, char **argv)
{
	const char *url;
	const char *ca;
	const char *prefix;
	long		calls;
	int			concurrency;
	CURLM	   *multi;
	Call	   *pool;
	long		next = 0;
	long		done = 0;
	long		good = 0;
	struct timespec t0;
	struct timespec t1;
	double		secs;

	if (argc != 9)
	{
		fprintf(stderr, "usage: %s URL CLIENT_ID PRIVATE_KEY PUBLIC_KEY CA_FILE ID_PREFIX CALLS CONCURRENCY\n", argv[0]);
		return 2;
	}
	{
		static char full[1024];

		snprintf(full, sizeof(full), "%s%s", argv[1], PATH);
		url = full;
	}
	client_id = argv[2];
	private_key = load_key(argv[3], 1);
	public_key = load_key(argv[4], 0);
	ca = argv[5];
	prefix = argv[6];
	calls = atol(argv[7]);
	concurrency = atoi(argv[8]);
	if (calls < 1 || concurrency < 1)
		return 2;

	curl_global_init(CURL_GLOBAL_ALL);
	multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) concurrency);
	pool = calloc(concurrency, sizeof(Call));
	for (int i = 0; i < concurrency; i++)
		pool[i].easy = curl_easy_init();

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (done < calls)
	{
		int			running;
		CURLMsg    *msg;
		int			left;

		for (int i = 0; i < concurrency && next < calls; i++)
			if (!pool[i].busy)
				start(multi, &pool[i], url, ca, prefix, next++);
		int			finished = 0;

		curl_multi_perform(multi, &running);
		while ((msg = curl_multi_info_read(multi, &left)) != NULL)
		{
			Call	   *c;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &c);
			if (msg->data.result == CURLE_OK && verified_s(c))
				good++;
			curl_multi_remove_handle(multi, msg->easy_handle);
			c->busy = 0;
			done++;
			finished++;
		}
		/* a finished call makes room: start the next one before waiting */
		if (done < calls && finished == 0)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("%ld %ld %.3f %.1f\n", calls, good, secs, calls / secs);

	for (int i = 0; i < concurrency; i++)
	{
		curl_slist_free_all(pool[i].headers);
		curl_easy_cleanup(pool[i].easy);
	}
	free(pool);
	curl_multi_cleanup(multi);
	EVP_PKEY_free(private_key);
	EVP_PKEY_free(public_key);
	curl_global_cleanup();
	return good == calls ? 0 : 1;
}
