--
-- inquiry: alipayplus_inquire_payment(), the signed inquiryPayment call.
-- Every outcome of the fake gateway's inquiry API (test/fake_gateway.py,
-- "inquiryPayment outcomes"); answers that are unsigned, badly signed,
-- about another payment or malformed never report the payment's result;
-- the fault matrix of sql/faults.sql on the inquiry path; every inquiry is
-- recorded in alipayplus.inquiries and nothing else changes; bad input,
-- read-only transactions and missing privileges are refused before
-- anything is sent.
--
SELECT gw_mark();
SELECT count(*) AS ledger_rows_before FROM alipayplus.cancellations \gset

-- paid, by paymentRequestId and by paymentId
SELECT result_status, result_code, result_message, payment_status, payment_code,
	payment_message, payment_id, payment_request_id, payment_time, amount_currency,
	amount_value, acquirer_id, psp_id, signature_verified,
	inquiry_id IS NOT NULL AS has_inquiry_id
FROM alipayplus_inquire_payment(payment_request_id => 'paid-iq-1');
SELECT result_status, payment_status, payment_code, payment_id, payment_request_id,
	payment_time, amount_currency, amount_value, signature_verified
FROM alipayplus_inquire_payment(payment_id => '2026030119401080010018899000001');
-- no prefix: paid too
SELECT result_status, payment_status, payment_code
FROM alipayplus_inquire_payment(payment_request_id => 'iq-plain-1');

-- what went over the wire: the inquiry path, one id, signed over that path
SELECT j->>'api' AS api, j->>'path' AS path, j->>'body' AS body,
	(j->>'signature_valid')::boolean AS signature_valid,
	j->>'content_type' AS content_type,
	j->>'request_time' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$' AS request_time_iso8601,
	j->>'signature_header' ~ '^algorithm=RSA256,keyVersion=1,signature=[A-Za-z0-9%]+$' AS header_format
FROM gw_log() WHERE j->>'id' IN ('paid-iq-1', '2026030119401080010018899000001') ORDER BY n;

-- the payment failed
SELECT result_status, result_code, payment_status, payment_code, payment_time,
	amount_currency, amount_value
FROM alipayplus_inquire_payment(payment_request_id => 'failed-USER_BALANCE_NOT_ENOUGH-iq');

-- in process, then paid after two inquiries
SELECT result_status, payment_status, payment_code, payment_time
FROM alipayplus_inquire_payment(payment_request_id => 'later-2-iq');
SELECT result_status, payment_status, payment_code, payment_time
FROM alipayplus_inquire_payment(payment_request_id => 'later-2-iq');
SELECT result_status, payment_status, payment_code, payment_time
FROM alipayplus_inquire_payment(payment_request_id => 'later-2-iq');

-- in process until cancelled: then closed
SELECT result_status, payment_status, payment_code
FROM alipayplus_inquire_payment(payment_request_id => 'inprocess-iq');
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'inprocess-iq');
SELECT result_status, payment_status, payment_code
FROM alipayplus_inquire_payment(payment_request_id => 'inprocess-iq');

-- not found: the inquiry's own F, no payment result (never a failed payment)
SELECT result_status, result_code, payment_status, payment_id, signature_verified
FROM alipayplus_inquire_payment(payment_request_id => 'notfound-iq');
-- ORDER_NOT_EXIST in paymentResult (some guides' place): reported as it came
SELECT result_status, result_code, payment_status, payment_code
FROM alipayplus_inquire_payment(payment_request_id => 'prnotfound-iq');

-- the inquiry's own U and F, signed
SELECT result_status, result_code, payment_status, signature_verified
FROM alipayplus_inquire_payment(payment_request_id => 'u-UNKNOWN_EXCEPTION-iq');
SELECT result_status, result_code, payment_status, signature_verified
FROM alipayplus_inquire_payment(payment_request_id => 'u-REQUEST_TRAFFIC_EXCEED_LIMIT-iq');
SELECT result_status, result_code, payment_status, signature_verified
FROM alipayplus_inquire_payment(payment_request_id => 'f-ACCESS_DENIED-iq');

-- signatures: an unsigned paid answer is not a result; unsigned F and U are
-- taken as they say (signature_verified NULL), a bad, half or foreign
-- signature is not taken, a spaced header is
CREATE TEMP TABLE sig_cases (n serial, id text);
INSERT INTO sig_cases (id) VALUES ('unsigned-S-iq'), ('unsigned-F-ORDER_NOT_EXIST-iq'),
	('unsigned-U-UNKNOWN_EXCEPTION-iq'), ('badsig-iq'), ('halfsigned-iq'),
	('otherclient-iq'), ('unsigned-otherclient-F-ORDER_NOT_EXIST-iq'),
	('keyversion-2-iq'), ('ecc224-iq'), ('spaced-iq'), ('casedsig-iq'),
	('zulutime-iq');
SELECT c.id, r.result_status, r.result_code, r.payment_status, r.payment_id,
	r.signature_verified
FROM sig_cases c, LATERAL alipayplus_inquire_payment(payment_request_id => c.id) r
ORDER BY c.n;

-- answers that are signed but not a usable inquiry result: U local.bad_response,
-- no payment fields; error_detail says why
CREATE TEMP TABLE spoilt_cases (n serial, id text);
INSERT INTO spoilt_cases (id) VALUES ('nopayresult-iq'), ('otherpayment-iq'),
	('ptyped-prstring-iq'), ('ptyped-prstatus-iq'), ('ptyped-prnocode-iq'),
	('ptyped-timenum-iq'), ('ptyped-badtime-iq'), ('ptyped-amountnum-iq'),
	('ptyped-amountdot-iq'), ('ptyped-nocurrency-iq'), ('noresult-iq'),
	('badjson-iq'), ('typed-statusbool-iq'), ('rstatus-X-iq'), ('noecho-iq');
SELECT c.id, r.result_status, r.result_code, r.payment_status, r.signature_verified
FROM spoilt_cases c, LATERAL alipayplus_inquire_payment(payment_request_id => c.id) r
ORDER BY c.n;
SELECT sent_id, error_detail FROM alipayplus.inquiries
WHERE sent_id IN (SELECT id FROM spoilt_cases) ORDER BY inquiry_id;

-- paymentId asked, the answer about another paymentId: refused too
SELECT result_status, result_code, payment_id
FROM alipayplus_inquire_payment(payment_id => 'otherpayment-iq-by-id');
-- paymentId asked, the answer without a paymentId (only the request id): refused
SELECT result_status, result_code, payment_status, payment_id
FROM alipayplus_inquire_payment(payment_id => 'noecho-iq-by-id');
SELECT error_detail FROM alipayplus.inquiries WHERE sent_id = 'noecho-iq-by-id';

-- the payment's time is read whatever the session's time zone and date style
SET TimeZone = 'America/Los_Angeles';
SET DateStyle = 'SQL, DMY';
SELECT payment_time = '2026-03-01 10:15:07+00'::timestamptz AS same_instant
FROM alipayplus_inquire_payment(payment_request_id => 'paid-iq-tz');
RESET TimeZone;
RESET DateStyle;

-- the path comes from alipayplus.inquiry_path and is signed: pointed at the
-- cancel API, the (cancel-shaped) answer is not an inquiry result
SELECT errcheck($$SET alipayplus.inquiry_path = 'aps/api'$$);
SELECT errcheck($$SET alipayplus.inquiry_path = '/aps/api v1'$$);
SET alipayplus.inquiry_path = '/aps/api/v1/payments/cancelPayment';
SELECT result_status, result_code, signature_verified
FROM alipayplus_inquire_payment(payment_request_id => 'iq-wrong-path');
SELECT error_detail FROM alipayplus.inquiries WHERE sent_id = 'iq-wrong-path';
SELECT j->>'api' AS api, j->>'path' AS path FROM gw_log() WHERE j->>'id' = 'iq-wrong-path';
RESET alipayplus.inquiry_path;

-- bad input: refused with a clear error, nothing sent, nothing recorded
SELECT gw_mark();
SELECT count(*) AS inquiries_before FROM alipayplus.inquiries \gset
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment()$$);
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment('p1', 'r1')$$);
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => '')$$);
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => '   ')$$);
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => E'a\nb')$$);
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => repeat('x', 65))$$);
-- missing configuration
SET alipayplus.client_id = '';
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => 'iq-noconf')$$);
RESET alipayplus.client_id;
-- a read-only transaction: the inquiry could not be recorded, so it is not sent
BEGIN READ ONLY;
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => 'iq-readonly')$$);
COMMIT;
SELECT count(*) AS requests_sent FROM gw_log();
SELECT count(*) - :inquiries_before AS inquiries_recorded FROM alipayplus.inquiries;

-- every inquiry of this file was recorded once and agrees with the gateway's log
SELECT gw_mark();
SELECT result_status, payment_status
FROM alipayplus_inquire_payment(payment_request_id => 'paid-iq-record');
SELECT i.sent_field, i.sent_id, i.result_status, i.result_code, i.payment_status,
	i.payment_code, i.http_status, i.signature_verified, i.latency_ms > 0 AS timed,
	i.inquired_by = session_user AS inquired_by_me,
	i.request_time = (SELECT j->>'request_time' FROM gw_log() WHERE j->>'id' = 'paid-iq-record') AS same_request_time
FROM alipayplus.inquiries i WHERE i.sent_id = 'paid-iq-record';
-- no key material and no signature in what is stored
SELECT count(*) AS rows_with_secrets FROM alipayplus.inquiries i
WHERE i::text ~* '(PRIVATE KEY|signature=|algorithm=RSA256)';
SELECT attname FROM pg_attribute
WHERE attrelid = 'alipayplus.inquiries'::regclass AND attnum > 0 AND NOT attisdropped
	AND attname ~ '(sign|key)' ORDER BY attnum;

-- an inquiry changes nothing but alipayplus.inquiries: the only ledger row
-- made in this file is inprocess-iq's, by alipayplus_cancel_payment
SELECT count(*) - :ledger_rows_before AS new_ledger_rows FROM alipayplus.cancellations;
SELECT sent_id, state FROM alipayplus.cancellations WHERE sent_id LIKE '%-iq%' ORDER BY 1;

-- privileges: nothing PUBLIC; a role without a grant is refused
SELECT p.proname, p.proacl IS NOT NULL AND NOT EXISTS (
		SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS not_public
FROM pg_proc p WHERE p.proname IN ('alipayplus_inquire_payment', '_call_inquiry') ORDER BY 1;
SELECT NOT EXISTS (SELECT 1 FROM aclexplode((SELECT relacl FROM pg_class
	WHERE oid = 'alipayplus.inquiries'::regclass)) a WHERE a.grantee = 0) AS table_not_public;
CREATE ROLE iq_nobody;
SET ROLE iq_nobody;
SELECT errcheck($$SELECT * FROM alipayplus_inquire_payment(payment_request_id => 'iq-nobody')$$);
RESET ROLE;
-- granted like alipayplus_cancel_payment: the function runs as its owner
CREATE ROLE iq_clerk;
GRANT EXECUTE ON FUNCTION alipayplus_inquire_payment(text, text) TO iq_clerk;
SET ROLE iq_clerk;
SELECT result_status, payment_status FROM alipayplus_inquire_payment(payment_request_id => 'paid-iq-clerk');
SELECT errcheck($$SELECT count(*) FROM alipayplus.inquiries$$);
RESET ROLE;
SELECT count(*) AS clerk_inquiries_recorded FROM alipayplus.inquiries WHERE sent_id = 'paid-iq-clerk';
REVOKE EXECUTE ON FUNCTION alipayplus_inquire_payment(text, text) FROM iq_clerk;
DROP ROLE iq_clerk;
DROP ROLE iq_nobody;

--
-- The fault matrix of sql/faults.sql on the inquiry path: every stalled,
-- broken, ambiguous or untrustworthy answer (each around a paid answer),
-- and every TLS peer that must not be trusted, ends as U with a local
-- code and no payment result; the inquiry is recorded; the backend
-- survives and its next inquiry, in the same session, works.
--
SELECT gw_mark();
SELECT pg_postmaster_start_time() AS pm_start, pg_backend_pid() AS backend_pid \gset
SET alipayplus.timeout_ms = 1000;
SET alipayplus.connect_timeout_ms = 1000;

CREATE TEMP TABLE iq_faults (
	n serial, what text, id text, result_status text, result_code text,
	payment_status text, next_inquiry text);

CREATE FUNCTION try_inquiry_fault(what text, id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	r record;
	ok record;
BEGIN
	SELECT * INTO r FROM alipayplus_inquire_payment(payment_request_id => id);
	RESET alipayplus.gateway_url;
	SELECT * INTO ok FROM alipayplus_inquire_payment(payment_request_id => 'after-' || id);
	INSERT INTO iq_faults (what, id, result_status, result_code, payment_status, next_inquiry)
	VALUES (what, id, r.result_status, r.result_code, r.payment_status,
			ok.result_status || ' ' || ok.payment_status);
END;
$$;

SELECT try_inquiry_fault('stall after the headers', 'headstall-5000-iqf');
SELECT try_inquiry_fault('body a byte every 200 ms', 'dribble-200-iqf');
SELECT try_inquiry_fault('chunked body over the cap', 'chunked-iqf');
SELECT try_inquiry_fault('body over the cap', 'huge-iqf');
SELECT try_inquiry_fault('connection closed mid-body', 'cutbody-iqf');
SELECT try_inquiry_fault('TCP reset', 'reset-iqf');
SELECT try_inquiry_fault('HTTP 500, unsigned', 'http500-iqf');
SELECT try_inquiry_fault('redirect', 'redirect-iqf');
SELECT try_inquiry_fault('HTTP 503', 'http-503-iqf');
SELECT try_inquiry_fault('HTTP 202', 'http-202-iqf');
SELECT try_inquiry_fault('empty body, signed', 'empty-iqf');
SELECT try_inquiry_fault('gzip never asked for, signed', 'gzip-iqf');
SELECT try_inquiry_fault('Signature twice, both valid', 'dupsig-iqf');
SELECT try_inquiry_fault('Signature twice, valid + bogus', 'dupsigbad-iqf');
SELECT try_inquiry_fault('Signature again in a trailer', 'trailersig-iqf');
SELECT try_inquiry_fault('Response-Time twice', 'duptime-iqf');
SELECT try_inquiry_fault('Client-Id twice', 'dupclient-iqf');
SELECT try_inquiry_fault('algorithm RSA512', 'algo-RSA512-iqf');
SELECT try_inquiry_fault('Response-Time text', 'rtime-text-iqf');
SELECT try_inquiry_fault('Response-Time without offset', 'rtime-notz-iqf');
SELECT try_inquiry_fault('Client-Id with odd bytes', 'otherclientbytes-iqf');
SELECT try_inquiry_fault('JSON nested 100000 deep', 'deepjson-iqf');
SELECT try_inquiry_fault('body cut inside an escape', 'cutescape-iqf');
SELECT 'https://localhost:' || trim(pg_read_file(current_setting('apc_rig.dir') || '/gateway.port.expired'), E'\n') AS url_expired,
	'https://localhost:' || trim(pg_read_file(current_setting('apc_rig.dir') || '/gateway.port.otherhost'), E'\n') AS url_otherhost,
	'https://localhost:' || trim(pg_read_file(current_setting('apc_rig.dir') || '/gateway.port.silent'), E'\n') AS url_silent \gset
SET alipayplus.gateway_url = :'url_expired';
SELECT try_inquiry_fault('expired certificate', 'tls-expired-iqf');
SET alipayplus.gateway_url = :'url_otherhost';
SELECT try_inquiry_fault('certificate for another host', 'tls-otherhost-iqf');
SET alipayplus.gateway_url = :'url_silent';
SELECT try_inquiry_fault('TCP accepted, no TLS spoken', 'tls-silent-iqf');

-- U with a local code every time, no payment result; the next inquiry is paid
SELECT what, result_status, result_code, payment_status, next_inquiry
FROM iq_faults ORDER BY n;

-- each fault is one recorded inquiry that agrees with the returned outcome
SELECT f.what, count(i.*) AS inquiries,
	bool_and(i.result_status = f.result_status AND i.result_code = f.result_code
			 AND i.payment_status IS NULL AND i.payment_id IS NULL
			 AND i.payment_time IS NULL AND i.amount_value IS NULL) AS recorded_as_returned,
	min(i.http_status) AS http_status, bool_or(i.signature_verified) AS verified
FROM iq_faults f LEFT JOIN alipayplus.inquiries i ON i.sent_id = f.id
GROUP BY f.n, f.what ORDER BY f.n;

-- the stalls ended at alipayplus.timeout_ms (1 s), not at the stall's end
SELECT sent_id, latency_ms >= 900 AND latency_ms < 4000 AS stopped_at_timeout
FROM alipayplus.inquiries
WHERE sent_id IN ('headstall-5000-iqf', 'dribble-200-iqf', 'tls-silent-iqf')
ORDER BY sent_id;
RESET alipayplus.timeout_ms;
RESET alipayplus.connect_timeout_ms;
RESET alipayplus.gateway_url;

-- an inquiry that would outlive statement_timeout ends as local.timeout,
-- recorded, without cancelling the statement
SET statement_timeout = '1500ms';
SELECT result_status, result_code, payment_status
FROM alipayplus_inquire_payment(payment_request_id => 'slow-5000-iqf');
RESET statement_timeout;
SELECT result_code, latency_ms < 1500 AS within_statement_timeout
FROM alipayplus.inquiries WHERE sent_id = 'slow-5000-iqf';

-- the same backend and postmaster all along; nothing was cancelled
SELECT pg_backend_pid() = :backend_pid AS same_backend,
	pg_postmaster_start_time() = :'pm_start' AS same_postmaster;
SELECT count(*) AS ledger_rows_from_faults FROM alipayplus.cancellations
WHERE sent_id LIKE '%-iqf';
