/*-------------------------------------------------------------------------
 *
 * json.c
 *	  The JSON of the cancelPayment API: building the request body and
 *	  reading the response, with PostgreSQL's own JSON lexer and parser.
 *
 * The request body is compact and holds exactly one id, JSON-escaped by
 * escape_json().  The response is parsed with pg_parse_json() and a small
 * set of semantic actions that pick out result.resultStatus, resultCode,
 * resultMessage and the top-level acquirerId and pspId; any other field is
 * ignored.  Nothing here raises an error on bad gateway input: a body that
 * is not the expected JSON is reported back to the caller.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

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

/* Which string the next scalar belongs to */
typedef enum ApsField
{
	APS_FIELD_NONE,
	APS_FIELD_ACQUIRER_ID,
	APS_FIELD_PSP_ID,
	APS_FIELD_RESULT,
	APS_FIELD_RESULT_STATUS,
	APS_FIELD_RESULT_CODE,
	APS_FIELD_RESULT_MESSAGE
} ApsField;

typedef struct ApsParseState
{
	int			depth;			/* object nesting, 1 = top level */
	int			array_depth;
	bool		in_result;		/* inside the top-level "result" object */
	bool		saw_result;
	ApsField	field;			/* field whose value comes next */
	ApsResult  *result;
} ApsParseState;

static void
on_object_start(void *arg)
{
	ApsParseState *st = arg;

	if (st->depth == 1 && st->array_depth == 0 && st->field == APS_FIELD_RESULT)
	{
		st->in_result = true;
		st->saw_result = true;
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
		st->in_result = false;
}

static void
on_array_start(void *arg)
{
	ApsParseState *st = arg;

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
	if (st->array_depth != 0)
		return;
	if (st->depth == 1)
	{
		if (strcmp(fname, "acquirerId") == 0)
			st->field = APS_FIELD_ACQUIRER_ID;
		else if (strcmp(fname, "pspId") == 0)
			st->field = APS_FIELD_PSP_ID;
		else if (strcmp(fname, "result") == 0)
			st->field = APS_FIELD_RESULT;
	}
	else if (st->depth == 2 && st->in_result)
	{
		if (strcmp(fname, "resultStatus") == 0)
			st->field = APS_FIELD_RESULT_STATUS;
		else if (strcmp(fname, "resultCode") == 0)
			st->field = APS_FIELD_RESULT_CODE;
		else if (strcmp(fname, "resultMessage") == 0)
			st->field = APS_FIELD_RESULT_MESSAGE;
	}
}

static void
on_scalar(void *arg, char *token, JsonTokenType tokentype)
{
	ApsParseState *st = arg;
	char	  **target = NULL;

	if (tokentype != JSON_TOKEN_STRING)
	{
		st->field = APS_FIELD_NONE;
		return;
	}
	switch (st->field)
	{
		case APS_FIELD_ACQUIRER_ID:
			target = &st->result->acquirer_id;
			break;
		case APS_FIELD_PSP_ID:
			target = &st->result->psp_id;
			break;
		case APS_FIELD_RESULT_STATUS:
			target = &st->result->result_status;
			break;
		case APS_FIELD_RESULT_CODE:
			target = &st->result->result_code;
			break;
		case APS_FIELD_RESULT_MESSAGE:
			target = &st->result->result_message;
			break;
		default:
			break;
	}
	if (target != NULL)
		*target = pg_any_to_server(token, strlen(token), PG_UTF8);
	st->field = APS_FIELD_NONE;
}

/*
 * Parse a cancelPayment response body.  Returns true and fills *result if
 * it is a JSON object whose "result" carries a status S, F or U and a
 * non-empty code; otherwise returns false and sets *problem.
 */
bool
aps_parse_result(const char *body, size_t len, ApsResult *result,
				 char **problem)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	ApsParseState st;
	JsonParseErrorType rc;
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

	copy = pnstrdup(body, len);
	memset(&sem, 0, sizeof(sem));
	memset(&st, 0, sizeof(st));
	st.result = result;
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
	if (result->result_status == NULL ||
		strlen(result->result_status) != 1 ||
		strchr("SFU", result->result_status[0]) == NULL)
	{
		*problem = "result.resultStatus is missing or not one of S, F, U";
		return false;
	}
	if (result->result_code == NULL || result->result_code[0] == '\0')
	{
		*problem = "result.resultCode is missing or empty";
		return false;
	}
	return true;
}
