/*-------------------------------------------------------------------------
 *
 * runtime.c
 *	  The backend services the extension's parsers use, for the libFuzzer
 *	  harnesses that run them outside a PostgreSQL backend.
 *
 * The harnesses link the extension's own src/json.c and src/signing.c with
 * PostgreSQL's frontend library libpgcommon.a (StringInfo, psprintf, the
 * JSON parser, the encoding tables) and libpgport.a.  This file stands in
 * for what only a backend has (and, at its end, holds the checks the
 * harnesses share):
 *
 * - Memory: palloc and its family on malloc, each chunk on a list that
 *   aps_fuzz_reset() frees after every input, as the reset of the memory
 *   context a call runs in would.  Each chunk is its own malloc block, so
 *   AddressSanitizer still sees its bounds, and LeakSanitizer still sees
 *   OpenSSL or libcurl memory that is not freed.
 * - Errors: ereport()/elog() at ERROR or above print the message and abort,
 *   so that libFuzzer reports any error raised on outside input as a
 *   crash ("nothing here raises an error on bad gateway input").
 * - The database encoding: set by the harness (UTF8, SQL_ASCII, LATIN1,
 *   WIN1252, EUC_JIS_2004).  The conversions from UTF8 are PostgreSQL's
 *   own, from its libraries (utf8_and_iso8859_1.so and the others, with
 *   the backend's conv.c that scripts/fuzz.sh compiles from the server's
 *   shipped bitcode), loaded with dlopen and called with the input limit
 *   pg_do_encoding_conversion_buf() applies.
 * - json_errdetail(), which the frontend JSON parser lacks (see below).
 * - The one place where the frontend JSON parser differs from the
 *   backend's on the extension's input: for a \u escape in a string, the
 *   backend calls pg_unicode_to_server(), which raises when the database
 *   encoding cannot hold the character (or has no conversion from UTF8,
 *   like SQL_ASCII); the frontend build calls unicode_to_utf8().
 *   scripts/fuzz.sh renames that call in its copy of jsonapi.o to
 *   aps_fuzz_json_unicode_to_utf8() below, which raises where the backend
 *   would.  Not covered: the backend parser's check_stack_depth() (the
 *   extension caps nesting at APS_MAX_JSON_DEPTH before parsing).
 * - Functions of the linked files that no harness reaches (key files,
 *   roles, settings, text datums): they abort if ever called.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>

#include "catalog/namespace.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "alipayplus_cancel.h"
#include "runtime.h"

#ifndef APS_FUZZ_PKGLIBDIR
#error "APS_FUZZ_PKGLIBDIR must name PostgreSQL's pkglibdir"
#endif

const int	aps_fuzz_encodings[APS_FUZZ_N_ENCODINGS] = {
	PG_UTF8, PG_SQL_ASCII, PG_LATIN1, PG_WIN1252, PG_EUC_JIS_2004
};

/*
 * PostgreSQL's conversions from UTF8, from its own libraries; the Oid
 * FindDefaultConversionProc() hands out is the index here plus one.
 */
typedef struct Conversion
{
	int			encoding;
	const char *library;
	const char *function;
	PGFunction	fn;
} Conversion;

static Conversion conversions[] = {
	{PG_LATIN1, "utf8_and_iso8859_1.so", "utf8_to_iso8859_1", NULL},
	{PG_WIN1252, "utf8_and_win.so", "utf8_to_win", NULL},
	{PG_EUC_JIS_2004, "utf8_and_euc2004.so", "utf8_to_euc_jis_2004", NULL},
};

static int	database_encoding = PG_UTF8;

/* ---------- errors ---------- */

sigjmp_buf *PG_exception_stack = NULL;
ErrorContextCallback *error_context_stack = NULL;

static int	error_level;
static char error_text[1024];

pg_attribute_noreturn() static void
runtime_error(const char *what)
{
	fprintf(stderr, "fuzz runtime: ERROR raised: %s\n", what);
	abort();
}

void
aps_fuzz_fail(const char *what)
{
	fprintf(stderr, "fuzz harness: check failed: %s\n", what);
	abort();
}

bool
errstart(int elevel, const char *domain)
{
	error_level = elevel;
	error_text[0] = '\0';
	return elevel >= ERROR;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	char		where[1200];

	snprintf(where, sizeof(where), "%s (level %d, %s:%d, %s)",
			 error_text, error_level, filename, lineno,
			 funcname ? funcname : "?");
	runtime_error(where);
}

int
errmsg(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(error_text, sizeof(error_text), fmt, ap);
	va_end(ap);
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(error_text, sizeof(error_text), fmt, ap);
	va_end(ap);
	return 0;
}

int
errcode(int sqlerrcode)
{
	return 0;
}

int
errcode_for_file_access(void)
{
	return 0;
}

int
errdetail(const char *fmt,...)
{
	return 0;
}

int
errdetail_internal(const char *fmt,...)
{
	return 0;
}

int
errdetail_log(const char *fmt,...)
{
	return 0;
}

int
errhint(const char *fmt,...)
{
	return 0;
}

void
pg_re_throw(void)
{
	runtime_error("pg_re_throw");
}

/* ---------- memory ---------- */

typedef struct Chunk
{
	struct Chunk *prev;
	struct Chunk *next;
	Size		size;
	Size		unused;			/* keeps the user part MAXALIGNed */
} Chunk;

static Chunk chunks = {&chunks, &chunks, 0, 0};

static void *
chunk_alloc(Size size, int flags)
{
	Chunk	   *c;

	if (!((flags & MCXT_ALLOC_HUGE) ? AllocHugeSizeIsValid(size) :
		  AllocSizeIsValid(size)))
		runtime_error("invalid memory alloc request size");
	c = (flags & MCXT_ALLOC_ZERO) ? calloc(1, sizeof(Chunk) + size) :
		malloc(sizeof(Chunk) + size);
	if (c == NULL)
	{
		if (flags & MCXT_ALLOC_NO_OOM)
			return NULL;
		runtime_error("out of memory");
	}
	c->size = size;
	c->prev = &chunks;
	c->next = chunks.next;
	chunks.next->prev = c;
	chunks.next = c;
	return c + 1;
}

static void
chunk_unlink(Chunk *c)
{
	c->prev->next = c->next;
	c->next->prev = c->prev;
}

void *
palloc(Size size)
{
	return chunk_alloc(size, 0);
}

void *
palloc0(Size size)
{
	return chunk_alloc(size, MCXT_ALLOC_ZERO);
}

void *
palloc_extended(Size size, int flags)
{
	return chunk_alloc(size, flags);
}

/* one context here: the one asked for does not matter */
void *
MemoryContextAllocExtended(MemoryContext context, Size size, int flags)
{
	(void) context;
	return chunk_alloc(size, flags);
}

void
pfree(void *pointer)
{
	Chunk	   *c = (Chunk *) pointer - 1;

	chunk_unlink(c);
	free(c);
}

void *
repalloc(void *pointer, Size size)
{
	Chunk	   *c = (Chunk *) pointer - 1;
	Chunk	   *n;

	if (!AllocSizeIsValid(size))
		runtime_error("invalid memory alloc request size");
	chunk_unlink(c);
	n = realloc(c, sizeof(Chunk) + size);
	if (n == NULL)
		runtime_error("out of memory");
	n->size = size;
	n->prev = &chunks;
	n->next = chunks.next;
	chunks.next->prev = n;
	chunks.next = n;
	return n + 1;
}

char *
pstrdup(const char *in)
{
	return pnstrdup(in, strlen(in));
}

char *
pnstrdup(const char *in, Size len)
{
	char	   *out;

	len = strnlen(in, len);
	out = palloc(len + 1);
	memcpy(out, in, len);
	out[len] = '\0';
	return out;
}

void
aps_fuzz_reset(void)
{
	while (chunks.next != &chunks)
	{
		Chunk	   *c = chunks.next;

		chunk_unlink(c);
		free(c);
	}
}

/* ---------- encodings ---------- */

static void
load_conversions(void)
{
	for (size_t i = 0; i < lengthof(conversions); i++)
	{
		char		path[MAXPGPATH];
		void	   *lib;

		if (conversions[i].fn != NULL)
			continue;
		snprintf(path, sizeof(path), "%s/%s", APS_FUZZ_PKGLIBDIR,
				 conversions[i].library);
		lib = dlopen(path, RTLD_NOW);
		if (lib != NULL)
			conversions[i].fn = (PGFunction) dlsym(lib, conversions[i].function);
		if (conversions[i].fn == NULL)
		{
			fprintf(stderr, "fuzz runtime: %s\n", dlerror());
			abort();
		}
	}
}

/* The conversion from UTF8 to the database encoding, or NULL */
static Conversion *
conversion_for(int encoding)
{
	for (size_t i = 0; i < lengthof(conversions); i++)
		if (conversions[i].encoding == encoding)
			return &conversions[i];
	return NULL;
}

void
aps_fuzz_set_encoding(int encoding)
{
	load_conversions();
	database_encoding = encoding;
}

int
GetDatabaseEncoding(void)
{
	return database_encoding;
}

Oid
FindDefaultConversionProc(int32 for_encoding, int32 to_encoding)
{
	Conversion *conv = conversion_for(to_encoding);

	if (for_encoding != PG_UTF8 || conv == NULL)
		return InvalidOid;
	return (Oid) (conv - conversions) + 1;
}

/* Call the conversion function, as OidFunctionCall6() would */
static int
call_conversion(Conversion *conv, int src_encoding, int dest_encoding,
				unsigned char *src, unsigned char *dest, int srclen,
				bool noError)
{
	LOCAL_FCINFO(fcinfo, 6);

	InitFunctionCallInfoData(*fcinfo, NULL, 6, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = Int32GetDatum(src_encoding);
	fcinfo->args[1].value = Int32GetDatum(dest_encoding);
	fcinfo->args[2].value = PointerGetDatum(src);
	fcinfo->args[3].value = PointerGetDatum(dest);
	fcinfo->args[4].value = Int32GetDatum(srclen);
	fcinfo->args[5].value = BoolGetDatum(noError);
	for (int i = 0; i < 6; i++)
		fcinfo->args[i].isnull = false;
	return DatumGetInt32(conv->fn(fcinfo));
}

int
pg_do_encoding_conversion_buf(Oid proc, int src_encoding, int dest_encoding,
							  unsigned char *src, int srclen,
							  unsigned char *dest, int destlen, bool noError)
{
	if (proc < 1 || proc > lengthof(conversions))
		runtime_error("conversion function not found");
	/* the backend passes no more input than the buffer holds at worst */
	if ((Size) srclen >= ((destlen - 1) / (Size) MAX_CONVERSION_GROWTH))
		srclen = ((destlen - 1) / (Size) MAX_CONVERSION_GROWTH);
	return call_conversion(&conversions[proc - 1], src_encoding,
						   dest_encoding, src, dest, srclen, noError);
}

bool
pg_verify_mbstr(int encoding, const char *mbstr, int len, bool noError)
{
	if (pg_encoding_verifymbstr(encoding, mbstr, len) == len)
		return true;
	if (!noError)
		runtime_error("invalid byte sequence");
	return false;
}

void
check_encoding_conversion_args(int src_encoding, int dest_encoding, int len,
							   int expected_src_encoding,
							   int expected_dest_encoding)
{
	/* an expected encoding below zero means any (utf8_to_win, for one) */
	if ((expected_src_encoding >= 0 && src_encoding != expected_src_encoding) ||
		(expected_dest_encoding >= 0 && dest_encoding != expected_dest_encoding) ||
		len < 0)
		runtime_error("conversion function called with wrong arguments");
}

void
report_invalid_encoding(int encoding, const char *mbstr, int len)
{
	runtime_error("invalid byte sequence for encoding");
}

void
report_untranslatable_char(int src_encoding, int dest_encoding,
						   const char *mbstr, int len)
{
	runtime_error("character has no equivalent in the database encoding");
}

/*
 * Where the backend's JSON parser calls pg_unicode_to_server() for a \u
 * escape (see the file header): raise as it would, else do what the
 * frontend parser does.
 */
unsigned char *aps_fuzz_json_unicode_to_utf8(pg_wchar c, unsigned char *s);

unsigned char *
aps_fuzz_json_unicode_to_utf8(pg_wchar c, unsigned char *s)
{
	if (c > 0x7F && database_encoding != PG_UTF8)
	{
		Conversion *conv = conversion_for(database_encoding);
		unsigned char utf8[MAX_MULTIBYTE_CHAR_LEN + 1];
		unsigned char out[MAX_CONVERSION_GROWTH * MAX_MULTIBYTE_CHAR_LEN + 1];

		if (conv == NULL)
			runtime_error("\\u escape: no conversion from UTF8 to the database encoding");
		unicode_to_utf8(c, utf8);
		call_conversion(conv, PG_UTF8, database_encoding, utf8, out,
						pg_utf_mblen(utf8), false);
	}
	return unicode_to_utf8(c, s);
}

/*
 * The text of a JSON parse error.  PostgreSQL 15 builds json_errdetail()
 * into the backend only.  This stand-in names the error and quotes the
 * token the parser stopped at, as the backend's messages do, so that the
 * problem text json.c returns carries the same bytes of the input.
 */
char *
json_errdetail(JsonParseErrorType error, JsonLexContext *lex)
{
	int			toklen = 0;

	if (lex->token_start != NULL && lex->token_terminator > lex->token_start)
		toklen = lex->token_terminator - lex->token_start;
	return psprintf("JSON parse error %d at token \"%.*s\"", (int) error,
					toklen, toklen > 0 ? lex->token_start : "");
}

/* ---------- never reached from a harness ---------- */

#define NOT_REACHED(name) runtime_error(name " is not available in a fuzz harness")

FILE *
AllocateFile(const char *name, const char *mode)
{
	NOT_REACHED("AllocateFile");
}

int
FreeFile(FILE *file)
{
	NOT_REACHED("FreeFile");
}

Oid
GetUserId(void)
{
	NOT_REACHED("GetUserId");
}

Oid
GetSessionUserId(void)
{
	NOT_REACHED("GetSessionUserId");
}

bool
superuser_arg(Oid roleid)
{
	NOT_REACHED("superuser_arg");
}

bool
has_privs_of_role(Oid member, Oid role)
{
	NOT_REACHED("has_privs_of_role");
}

void
aps_require_setting(const char *name, const char *value)
{
	NOT_REACHED("aps_require_setting");
}

void
escape_json(StringInfo buf, const char *str)
{
	NOT_REACHED("escape_json");
}

char *
pg_server_to_any(const char *s, int len, int encoding)
{
	NOT_REACHED("pg_server_to_any");
}

struct varlena *
pg_detoast_datum_packed(struct varlena *datum)
{
	NOT_REACHED("pg_detoast_datum_packed");
}

char *
text_to_cstring(const text *t)
{
	NOT_REACHED("text_to_cstring");
}

text *
cstring_to_text(const char *s)
{
	NOT_REACHED("cstring_to_text");
}

char	   *aps_private_key_file = NULL;
char	   *aps_public_key_file = NULL;
int			aps_key_version = 1;
int			aps_response_key_version = 1;	/* test vector B's keyVersion */

/* ---------- checks shared by the harnesses ---------- */

/*
 * What aps_network_text() promises: at most APS_MAX_NETWORK_TEXT_BYTES,
 * valid in the database encoding, no C0 or C1 control characters.
 */
void
aps_fuzz_check_network_text(const char *text)
{
	size_t		len = strlen(text);

	if (len > APS_MAX_NETWORK_TEXT_BYTES)
		aps_fuzz_fail("network text longer than APS_MAX_NETWORK_TEXT_BYTES");
	if (!pg_verify_mbstr(database_encoding, text, (int) len, true))
		aps_fuzz_fail("network text not valid in the database encoding");
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) text[i];

		if (c < 0x20 || c == 0x7f)
			aps_fuzz_fail("network text holds a control character");
		/* C1 controls, U+0080..U+009F, where they can be told by bytes */
		if (database_encoding == PG_LATIN1 && c >= 0x80 && c <= 0x9f)
			aps_fuzz_fail("network text holds a C1 control character");
		if ((database_encoding == PG_UTF8 || database_encoding == PG_SQL_ASCII) &&
			c == 0xc2 && i + 1 < len &&
			(unsigned char) text[i + 1] >= 0x80 &&
			(unsigned char) text[i + 1] <= 0x9f)
			aps_fuzz_fail("network text holds a C1 control character");
	}
}
