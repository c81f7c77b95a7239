--
-- outcomes: every gateway answer maps to S, F or U; nothing but a verified
-- S cancels; the request is built exactly per the spec.
--
SELECT gw_mark();

-- S, by paymentRequestId and by paymentId
SELECT result_status, result_code, result_message, acquirer_id, psp_id, state
FROM alipayplus_cancel_payment(payment_request_id => 'out-ok-1');
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_id => '2019060811401080010018882020035');

-- what went over the wire
SELECT j->>'body' AS body, j->>'content_type' AS content_type,
	j->>'client_id' AS client_id, (j->>'signature_valid')::boolean AS signature_valid,
	j->>'request_time' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$' AS request_time_iso8601,
	j->>'signature_header' ~ '^algorithm=RSA256,keyVersion=1,signature=[A-Za-z0-9%]+$' AS header_format
FROM gw_log() WHERE j->>'id' IN ('out-ok-1', '2019060811401080010018882020035') ORDER BY n;
-- the id is JSON-escaped
SELECT result_status FROM alipayplus_cancel_payment(payment_request_id => 'out-"q"\b/s');
SELECT gw_last('out-"q"\b/s')->>'body' AS escaped_body;

-- one connection, kept alive and reused, for the calls of a session
SELECT count(DISTINCT j->>'peer') AS connections, count(*) AS requests
FROM gw_log() WHERE j->>'id' IN ('out-ok-1', '2019060811401080010018882020035', 'out-"q"\b/s');

-- the attempt rows: verified, timed, no signature or key stored
SELECT sent_field, sent_id, result_status, result_code, http_status,
	signature_verified, latency_ms > 0 AS timed, error_detail,
	request_time = (SELECT j->>'request_time' FROM gw_log() WHERE j->>'id' = 'out-ok-1') AS same_request_time
FROM alipayplus.cancel_attempts WHERE sent_id = 'out-ok-1';

-- a second call for a cancelled payment reports the stored success and sends nothing
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-ok-1');
SELECT gw_requests('out-ok-1') AS requests;

-- F codes, signed: taken as they are
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'f-PROCESS_FAIL-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'f-ACCESS_DENIED-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'f-SOMETHING_NEW-out');
-- U codes, signed
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'u-UNKNOWN_EXCEPTION-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'u-REQUEST_TRAFFIC_EXCEED_LIMIT-out');
-- unsigned F and U are taken as they say; an unsigned S is not a success
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'unsigned-F-ACCESS_DENIED-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'unsigned-U-UNKNOWN_EXCEPTION-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'unsigned-S-out');
-- a signature that does not verify, a half-signed answer, another client id
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'badsig-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'halfsigned-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'otherclient-out');
-- header variants: blanks after commas, lowercase hex and header names
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'spaced-out');
-- broken answers; a redirect is not followed
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'http500-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'redirect-out');
SELECT count(*) AS requests_after_redirect FROM gw_log() WHERE j->>'id' = 'redirect-out' OR j->>'path' <> '/aps/api/v1/payments/cancelPayment';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'badjson-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'noresult-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'huge-out');
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'reset-out');
-- too slow
SET alipayplus.timeout_ms = 300;
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'slow-2000-out');
RESET alipayplus.timeout_ms;
-- nobody listening
SET alipayplus.gateway_url = 'https://127.0.0.1:1';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-refused');
RESET alipayplus.gateway_url;
-- a certificate from another CA, and the system CA bundle: both refused
SET alipayplus.ca_file = '/tmp/alipayplus_rig/keys/other_ca.pem';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-tls-1');
SET alipayplus.ca_file = '';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-tls-2');
RESET alipayplus.ca_file;
-- an address the certificate does not name (it names only localhost)
SELECT replace(current_setting('alipayplus.gateway_url'), 'localhost', '127.0.0.1') AS other_host \gset
SET alipayplus.gateway_url = :'other_host';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-tls-3');
RESET alipayplus.gateway_url;
-- the gateway refuses a request signed with another key, or for another client
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client2.pem';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-wrongkey');
RESET alipayplus.private_key_file;
SET alipayplus.client_id = 'SANDBOX_OTHER';
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'out-wrongclient');
RESET alipayplus.client_id;

-- the local verdicts, with what the attempt rows say
SELECT sent_id, result_status, result_code, http_status, signature_verified,
	left(regexp_replace(error_detail, '\d+', 'N', 'g'), 60) AS detail
FROM alipayplus.cancel_attempts
WHERE sent_id LIKE '%-out' OR sent_id LIKE 'out-%'
ORDER BY attempt_id;

-- no attempt stores a signature or key material
SELECT count(*) AS leaky_rows FROM alipayplus.cancel_attempts a
WHERE a::text ~ 'signature=|BEGIN|PRIVATE';
-- only verified S answers cancelled anything
SELECT c.state, a.result_status, a.signature_verified, count(*)
FROM alipayplus.cancellations c
JOIN alipayplus.cancel_attempts a USING (cancellation_id)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
