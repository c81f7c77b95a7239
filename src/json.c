/*-------------------------------------------------------------------------
 *
 * json.c
 *	  The JSON of the cancelPayment and inquiryPayment APIs: building the
 *	  request body and reading the response, with PostgreSQL's own JSON
 *	  lexer and parser.
 *
 * The request body (the same for both APIs) is compact and holds exactly
 * one id, JSON-escaped by escape_json().  The response is parsed with
 * pg_parse_json() and a small set of semantic actions that pick out
 * result.resultStatus, resultCode, resultMessage and the top-level
 * acquirerId and pspId; for inquiryPayment also paymentResult (the same
 * three fields), paymentId, paymentRequestId, paymentTime and
 * paymentAmount.currency and .value.  Any other field is ignored.  Nothing here raises an error on bad gateway input: a body that
 * is not the expected JSON is reported back to the caller.  Two properties
 * of the backend's JSON parser would break that, so a pre-scan of the body
 * deals with them first: the parser recurses once per nesting level and
 * raises "stack depth limit exceeded" on deep input, so bodies nested
 * deeper than APS_MAX_JSON_DEPTH are refused; and it converts \u escapes
 * to the database encoding, raising when a character has no equivalent
 * there, so the pre-scan turns every non-ASCII \u escape into its UTF-8
 * bytes and the parser never sees one.  The strings picked out stay in
 * UTF-8; aps_network_text() makes them (and any other text received from
 * the network) fit for the database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "alipayplus_cancel.h"

/*
 * The body for one id: {"<field>":"<value>"}.  The value is converted to
 * UTF-8, the encoding of the wire format, before it is escaped.
 */
char *
aps_cancel_body(const char *field, const char *value)
{
	StringInfoData buf;
	char	   *utf8 = pg_server_to_any(value, strlen(value), PG_UTF8);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	escape_json(&buf, field);
	appendStringInfoChar(&buf, ':');
	escape_json(&buf, utf8);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* Which string the next scalar belongs to, or which object comes next */
typedef enum ApsField
{
	APS_FIELD_NONE,
	APS_FIELD_ACQUIRER_ID,
	APS_FIELD_PSP_ID,
	APS_FIELD_RESULT,
	APS_FIELD_RESULT_STATUS,
	APS_FIELD_RESULT_CODE,
	APS_FIELD_RESULT_MESSAGE,
	/* inquiryPayment only */
	APS_FIELD_PAYMENT_RESULT,
	APS_FIELD_PAYMENT_STATUS,
	APS_FIELD_PAYMENT_CODE,
	APS_FIELD_PAYMENT_MESSAGE,
	APS_FIELD_PAYMENT_ID,
	APS_FIELD_PAYMENT_REQUEST_ID,
	APS_FIELD_PAYMENT_TIME,
	APS_FIELD_PAYMENT_AMOUNT,
	APS_FIELD_AMOUNT_CURRENCY,
	APS_FIELD_AMOUNT_VALUE
} ApsField;

typedef struct ApsParseState
{
	int			depth;			/* object nesting, 1 = top level */
	int			array_depth;
	ApsField	in_object;		/* the top-level object we are in (depth 2) */
	bool		saw_result;
	bool		payment_fields; /* also pick out inquiryPayment's fields */
	ApsField	field;			/* field whose value comes next */
	ApsField	wrong_type;		/* first field found with a value of the wrong type */
	ApsResult  *result;
} ApsParseState;

/*
 * The fields picked out of a response, where they stand: at the top level
 * (within NONE) or inside one of the top-level objects (within RESULT,
 * PAYMENT_RESULT or PAYMENT_AMOUNT), and where the string goes (an offset
 * into ApsResult; -1 for an object).  payment marks inquiryPayment's own.
 * One table for finding them, storing them and naming them in messages.
 */
#define RESULT_STRING(member) ((int) offsetof(ApsResult, member))
static const struct
{
	ApsField	field;
	ApsField	within;
	const char *name;
	int			offset;
	bool		payment;
}			known_fields[] = {
	{APS_FIELD_ACQUIRER_ID, APS_FIELD_NONE, "acquirerId", RESULT_STRING(acquirer_id), false},
	{APS_FIELD_PSP_ID, APS_FIELD_NONE, "pspId", RESULT_STRING(psp_id), false},
	{APS_FIELD_RESULT, APS_FIELD_NONE, "result", -1, false},
	{APS_FIELD_RESULT_STATUS, APS_FIELD_RESULT, "resultStatus", RESULT_STRING(result_status), false},
	{APS_FIELD_RESULT_CODE, APS_FIELD_RESULT, "resultCode", RESULT_STRING(result_code), false},
	{APS_FIELD_RESULT_MESSAGE, APS_FIELD_RESULT, "resultMessage", RESULT_STRING(result_message), false},
	{APS_FIELD_PAYMENT_RESULT, APS_FIELD_NONE, "paymentResult", -1, true},
	{APS_FIELD_PAYMENT_STATUS, APS_FIELD_PAYMENT_RESULT, "resultStatus", RESULT_STRING(payment_status), true},
	{APS_FIELD_PAYMENT_CODE, APS_FIELD_PAYMENT_RESULT, "resultCode", RESULT_STRING(payment_code), true},
	{APS_FIELD_PAYMENT_MESSAGE, APS_FIELD_PAYMENT_RESULT, "resultMessage", RESULT_STRING(payment_message), true},
	{APS_FIELD_PAYMENT_ID, APS_FIELD_NONE, "paymentId", RESULT_STRING(payment_id), true},
	{APS_FIELD_PAYMENT_REQUEST_ID, APS_FIELD_NONE, "paymentRequestId", RESULT_STRING(payment_request_id), true},
	{APS_FIELD_PAYMENT_TIME, APS_FIELD_NONE, "paymentTime", RESULT_STRING(payment_time), true},
	{APS_FIELD_PAYMENT_AMOUNT, APS_FIELD_NONE, "paymentAmount", -1, true},
	{APS_FIELD_AMOUNT_CURRENCY, APS_FIELD_PAYMENT_AMOUNT, "currency", RESULT_STRING(amount_currency), true},
	{APS_FIELD_AMOUNT_VALUE, APS_FIELD_PAYMENT_AMOUNT, "value", RESULT_STRING(amount_value), true},
};
#undef RESULT_STRING

/* A field's entry in known_fields */
static int
field_index(ApsField field)
{
	for (int i = 0; i < (int) lengthof(known_fields); i++)
		if (known_fields[i].field == field)
			return i;
	return -1;
}

/* Whether a field's value is an object (result, paymentResult, paymentAmount) */
static bool
is_object_field(ApsField field)
{
	int			i = field_index(field);

	return i >= 0 && known_fields[i].offset < 0;
}

/* The name of a field, for messages: "result.resultCode" */
static const char *
field_name(ApsField field)
{
	int			i = field_index(field);

	if (i < 0)
		return "?";
	if (known_fields[i].within != APS_FIELD_NONE)
		return psprintf("%s.%s", field_name(known_fields[i].within),
						known_fields[i].name);
	return known_fields[i].name;
}

/*
 * Note a field whose value turned out to be of the wrong type (a number,
 * true/false/null, an array, or an object where a string belongs; a
 * string or an array where an object belongs): such a body is not a result
 * of the API, whatever else it says.  is_object says the value is an object.
 */
static void
note_wrong_type(ApsParseState *st, bool is_object)
{
	if (st->field != APS_FIELD_NONE &&
		(!is_object || !is_object_field(st->field)) &&
		st->wrong_type == APS_FIELD_NONE)
		st->wrong_type = st->field;
}

static void
on_object_start(void *arg)
{
	ApsParseState *st = arg;

	note_wrong_type(st, true);
	if (st->depth == 1 && st->array_depth == 0 && is_object_field(st->field))
	{
		st->in_object = st->field;
		if (st->field == APS_FIELD_RESULT)
			st->saw_result = true;
		else if (st->field == APS_FIELD_PAYMENT_RESULT)
			st->result->saw_payment_result = true;
	}
	st->depth++;
	st->field = APS_FIELD_NONE;
}

static void
on_object_end(void *arg)
{
	ApsParseState *st = arg;

	st->depth--;
	if (st->depth == 1)
		st->in_object = APS_FIELD_NONE;
}

static void
on_array_start(void *arg)
{
	ApsParseState *st = arg;

	note_wrong_type(st, false);
	st->array_depth++;
	st->field = APS_FIELD_NONE;
}

static void
on_array_end(void *arg)
{
	ApsParseState *st = arg;

	st->array_depth--;
}

static void
on_field_start(void *arg, char *fname, bool isnull)
{
	ApsParseState *st = arg;

	st->field = APS_FIELD_NONE;
	if (st->array_depth != 0 || st->depth > 2 ||
		(st->depth == 2 && st->in_object == APS_FIELD_NONE))
		return;
	for (size_t i = 0; i < lengthof(known_fields); i++)
		if (known_fields[i].within == st->in_object &&
			(st->payment_fields || !known_fields[i].payment) &&
			strcmp(fname, known_fields[i].name) == 0)
		{
			st->field = known_fields[i].field;
			break;
		}
}

static void
on_scalar(void *arg, char *token, JsonTokenType tokentype)
{
	ApsParseState *st = arg;
	int			i = field_index(st->field);

	if (tokentype != JSON_TOKEN_STRING || (i >= 0 && known_fields[i].offset < 0))
		note_wrong_type(st, false);
	else if (i >= 0)
		*(char **) ((char *) st->result + known_fields[i].offset) =
			pstrdup(token);		/* UTF-8, see aps_network_text() */
	st->field = APS_FIELD_NONE;
}

/* The value of one hex digit, or -1 */
static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The code unit of the \uXXXX escape at s (len bytes left), or -1 */
static int
u_escape(const char *s, size_t len)
{
	int			code = 0;

	if (len < 6 || s[0] != '\\' || s[1] != 'u')
		return -1;
	for (int i = 2; i < 6; i++)
	{
		int			d = hex_value(s[i]);

		if (d < 0)
			return -1;
		code = code * 16 + d;
	}
	return code;
}

/*
 * Copy a response body into "out" for pg_parse_json(), with every \u
 * escape of a non-ASCII character (a surrogate pair as one) replaced by
 * its UTF-8 bytes; escapes of ASCII characters, lone surrogates and
 * anything malformed are copied unchanged for the parser to judge.  Also
 * measure the nesting of objects and arrays outside strings.  Returns
 * false, with *problem set, if it is deeper than APS_MAX_JSON_DEPTH.
 */
static bool
prepare_json(const char *body, size_t len, StringInfo out, char **problem)
{
	int			depth = 0;
	bool		in_string = false;
	size_t		i = 0;

	while (i < len)
	{
		char		c = body[i];

		if (!in_string)
		{
			if (c == '{' || c == '[')
			{
				if (++depth > APS_MAX_JSON_DEPTH)
				{
					*problem = psprintf("the response body is nested deeper than %d levels",
										APS_MAX_JSON_DEPTH);
					return false;
				}
			}
			else if (c == '}' || c == ']')
				depth--;
			else if (c == '"')
				in_string = true;
			appendStringInfoChar(out, c);
			i++;
		}
		else if (c == '"')
		{
			in_string = false;
			appendStringInfoChar(out, c);
			i++;
		}
		else if (c == '\\' && i + 1 < len && body[i + 1] == 'u')
		{
			int			code = u_escape(body + i, len - i);
			int			low = len - i >= 12 ? u_escape(body + i + 6, len - i - 6) : -1;
			size_t		used = 6;
			unsigned char utf8[MAX_MULTIBYTE_CHAR_LEN + 1];

			if (code >= 0xD800 && code <= 0xDBFF && low >= 0xDC00 && low <= 0xDFFF)
			{
				code = surrogate_pair_to_codepoint(code, low);
				used = 12;
			}
			if (code < 0x80 || (code >= 0xD800 && code <= 0xDFFF))
			{
				/* ASCII, a lone surrogate, or malformed: the parser judges */
				appendBinaryStringInfo(out, body + i, 2);
				i += 2;
			}
			else
			{
				unicode_to_utf8((pg_wchar) code, utf8);
				appendBinaryStringInfo(out, (char *) utf8, pg_utf_mblen(utf8));
				i += used;
			}
		}
		else if (c == '\\' && i + 1 < len)
		{
			appendBinaryStringInfo(out, body + i, 2);
			i += 2;
		}
		else
		{
			appendStringInfoChar(out, c);
			i++;
		}
	}
	return true;
}

/*
 * Make text received from the network fit to be stored in the database:
 *
 * - Valid UTF-8 is converted to the database encoding; a character that
 *   has no equivalent there becomes \uXXXX (or \UXXXXXXXX).  In a
 *   SQL_ASCII database, valid UTF-8 is kept as it is, as PostgreSQL does.
 * - Bytes that are not valid UTF-8 and ASCII control characters become
 *   \xNN, C1 control characters \u00NN.
 * - The result is at most APS_MAX_NETWORK_TEXT_BYTES bytes long; a cut is
 *   marked with "...".
 *
 * Conversion errors are never raised: text that cannot be converted is
 * escaped.  Text made only here (ASCII) passes unchanged.
 */
char *
aps_network_text(const char *s, size_t len)
{
	int			dbenc = GetDatabaseEncoding();
	Oid			proc = InvalidOid;
	StringInfoData out;
	size_t		i = 0;
	bool		cut = false;

	if (dbenc != PG_UTF8 && dbenc != PG_SQL_ASCII)
		proc = FindDefaultConversionProc(PG_UTF8, dbenc);

	initStringInfo(&out);
	while (i < len)
	{
		const unsigned char *c = (const unsigned char *) s + i;
		unsigned char piece[16];
		int			piecelen;
		int			charlen = 1;

		if (*c < 0x80)
		{
			if (*c < 0x20 || *c == 0x7f)
				piecelen = snprintf((char *) piece, sizeof(piece), "\\x%02x", *c);
			else
			{
				piece[0] = *c;
				piecelen = 1;
			}
		}
		else if ((charlen = pg_utf_mblen(c)) > (int) (len - i) ||
				 !pg_utf8_islegal(c, charlen))
		{
			charlen = 1;
			piecelen = snprintf((char *) piece, sizeof(piece), "\\x%02x", *c);
		}
		else
		{
			pg_wchar	code = utf8_to_unicode(c);

			piecelen = -1;
			if (code < 0xA0)
				;				/* C1 control: escaped below */
			else if (dbenc == PG_UTF8 || dbenc == PG_SQL_ASCII)
			{
				memcpy(piece, c, charlen);
				piecelen = charlen;
			}
			else if (OidIsValid(proc))
			{
				unsigned char conv[MAX_CONVERSION_GROWTH * MAX_MULTIBYTE_CHAR_LEN + 1];
				int			done;

				done = pg_do_encoding_conversion_buf(proc, PG_UTF8, dbenc,
													 (unsigned char *) c, charlen,
													 conv, sizeof(conv), true);
				if (done == charlen && strlen((char *) conv) < sizeof(piece))
				{
					piecelen = strlen((char *) conv);
					memcpy(piece, conv, piecelen);
				}
			}
			if (piecelen < 0)
				piecelen = snprintf((char *) piece, sizeof(piece),
									code > 0xFFFF ? "\\U%08x" : "\\u%04x",
									(unsigned int) code);
		}

		if (out.len + piecelen > APS_MAX_NETWORK_TEXT_BYTES - 3)
		{
			cut = true;
			break;
		}
		appendBinaryStringInfo(&out, (char *) piece, piecelen);
		i += charlen;
	}
	if (cut)
		appendStringInfoString(&out, "...");
	return out.data;
}

/* Whether s is one of the status letters S, F, U */
static bool
is_status(const char *s)
{
	return s != NULL && strlen(s) == 1 && strchr("SFU", s[0]) != NULL;
}

/*
 * Parse a cancelPayment (payment_fields false) or inquiryPayment
 * (payment_fields true) response body.  Returns true and fills *result if
 * it is a JSON object whose "result" carries a status S, F or U and a
 * non-empty code, and, if it has a "paymentResult", that too; otherwise
 * returns false and sets *problem.  What the inquiry's other fields say is
 * judged by the caller.
 */
bool
aps_parse_result(const char *body, size_t len, bool payment_fields,
				 ApsResult *result, char **problem)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	ApsParseState st;
	JsonParseErrorType rc;
	StringInfoData prepared;
	char	   *copy;

	memset(result, 0, sizeof(*result));
	*problem = NULL;

	if (len == 0)
	{
		*problem = "the response body is empty";
		return false;
	}
	if (!pg_verify_mbstr(PG_UTF8, body, (int) len, true))
	{
		*problem = "the response body is not valid UTF-8";
		return false;
	}

	/* skip leading white space to check that the top level is an object */
	while (len > 0 && (*body == ' ' || *body == '\t' || *body == '\n' || *body == '\r'))
		body++, len--;
	if (len == 0 || *body != '{')
	{
		*problem = "the response body is not a JSON object";
		return false;
	}

	initStringInfo(&prepared);
	if (!prepare_json(body, len, &prepared, problem))
		return false;
	copy = prepared.data;
	len = prepared.len;

	memset(&sem, 0, sizeof(sem));
	memset(&st, 0, sizeof(st));
	st.result = result;
	st.payment_fields = payment_fields;
	sem.semstate = &st;
	sem.object_start = on_object_start;
	sem.object_end = on_object_end;
	sem.array_start = on_array_start;
	sem.array_end = on_array_end;
	sem.object_field_start = on_field_start;
	sem.scalar = on_scalar;

	lex = makeJsonLexContextCstringLen(copy, (int) len, PG_UTF8, true);
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		*problem = psprintf("the response body is not valid JSON: %s",
							json_errdetail(rc, lex));
		return false;
	}

	if (!st.saw_result)
	{
		*problem = "the response has no \"result\" object";
		return false;
	}
	if (st.wrong_type != APS_FIELD_NONE)
	{
		*problem = psprintf(is_object_field(st.wrong_type) ?
							"%s is not a JSON object" : "%s is not a JSON string",
							field_name(st.wrong_type));
		return false;
	}
	if (!is_status(result->result_status))
	{
		*problem = "result.resultStatus is missing or not one of S, F, U";
		return false;
	}
	if (result->result_code == NULL || result->result_code[0] == '\0')
	{
		*problem = "result.resultCode is missing or empty";
		return false;
	}
	if (result->saw_payment_result && !is_status(result->payment_status))
	{
		*problem = "paymentResult.resultStatus is missing or not one of S, F, U";
		return false;
	}
	if (result->saw_payment_result &&
		(result->payment_code == NULL || result->payment_code[0] == '\0'))
	{
		*problem = "paymentResult.resultCode is missing or empty";
		return false;
	}
	return true;
}
