--
-- faults: the fault matrix.  Every stalled, broken, ambiguous or
-- untrustworthy answer of the gateway (test/fake_gateway.py, "Fault
-- modes"), and every TLS peer that must not be trusted, ends as U with a
-- local code, never S; the attempt is recorded in the ledger; the backend
-- survives and its next call, in the same session, succeeds.
--
SELECT gw_mark();
SELECT pg_postmaster_start_time() AS pm_start, pg_backend_pid() AS backend_pid \gset
-- keep the stalls short
SET alipayplus.timeout_ms = 1000;
SET alipayplus.connect_timeout_ms = 1000;

CREATE TEMP TABLE fault_results (
	n serial, what text, id text, result_status text, result_code text,
	state text, next_call text);

-- one faulty call, then an ordinary call in the same session
CREATE FUNCTION try_fault(what text, id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	r record;
	ok record;
BEGIN
	SELECT * INTO r FROM alipayplus_cancel_payment(payment_request_id => id);
	RESET alipayplus.gateway_url;
	SELECT * INTO ok FROM alipayplus_cancel_payment(payment_request_id => 'after-' || id);
	INSERT INTO fault_results (what, id, result_status, result_code, state, next_call)
	VALUES (what, id, r.result_status, r.result_code, r.state,
			ok.result_status || ' ' || ok.state);
END;
$$;

-- the answer stalls, dribbles, is too big, or is cut short
SELECT try_fault('stall after the headers', 'headstall-5000-fm');
SELECT try_fault('body a byte every 200 ms', 'dribble-200-fm');
SELECT try_fault('chunked body over the cap', 'chunked-fm');
SELECT try_fault('connection closed mid-body', 'cutbody-fm');
-- HTTP statuses other than 200, each with a validly signed S body
SELECT try_fault('HTTP 429', 'http-429-fm');
SELECT try_fault('HTTP 502', 'http-502-fm');
SELECT try_fault('HTTP 503', 'http-503-fm');
SELECT try_fault('HTTP 504', 'http-504-fm');
SELECT try_fault('HTTP 201', 'http-201-fm');
SELECT try_fault('HTTP 202', 'http-202-fm');
SELECT try_fault('HTTP 204', 'http-204-fm');
-- bodies
SELECT try_fault('empty body, signed', 'empty-fm');
SELECT try_fault('gzip never asked for, signed', 'gzip-fm');
-- duplicated headers
SELECT try_fault('Signature twice, both valid', 'dupsig-fm');
SELECT try_fault('Signature twice, valid + bogus', 'dupsigbad-fm');
SELECT try_fault('Signature again in a trailer', 'trailersig-fm');
SELECT try_fault('Response-Time twice', 'duptime-fm');
SELECT try_fault('Client-Id twice', 'dupclient-fm');
-- Signature fields
SELECT try_fault('algorithm RSA512', 'algo-RSA512-fm');
SELECT try_fault('algorithm ECC224', 'ecc224-fm');
SELECT try_fault('keyVersion 2', 'keyversion-2-fm');
SELECT try_fault('keyVersion not a number', 'keyversion-x-fm');
-- a Response-Time that is not a time, signed as it is
SELECT try_fault('Response-Time text', 'rtime-text-fm');
SELECT try_fault('Response-Time epoch', 'rtime-epoch-fm');
SELECT try_fault('Response-Time month 13', 'rtime-month13-fm');
SELECT try_fault('Response-Time without offset', 'rtime-notz-fm');
SELECT try_fault('Response-Time February 29 of 2025', 'rtime-feb29-fm');
SELECT try_fault('Response-Time offset +16:00', 'rtime-offset16-fm');
-- result objects with wrongly typed fields, signed
SELECT try_fault('resultStatus true', 'typed-statusbool-fm');
SELECT try_fault('resultStatus ["S"]', 'typed-statusarray-fm');
SELECT try_fault('resultCode 0', 'typed-codenum-fm');
SELECT try_fault('resultMessage 1', 'typed-msgnum-fm');
SELECT try_fault('resultMessage null', 'typed-msgnull-fm');
SELECT try_fault('acquirerId a number', 'typed-acqnum-fm');
SELECT try_fault('pspId an object', 'typed-pspobj-fm');
SELECT try_fault('result a string', 'typed-resultstring-fm');
SELECT try_fault('result an array', 'typed-resultarray-fm');
-- resultStatus outside S/F/U, signed
SELECT try_fault('resultStatus X', 'rstatus-X-fm');
SELECT try_fault('resultStatus s', 'rstatus-s-fm');
SELECT try_fault('resultStatus empty', 'rstatus--fm');
SELECT try_fault('resultStatus SS', 'rstatus-SS-fm');
-- TLS peers from the rig's CA with one thing wrong, and one that never speaks
SELECT 'https://localhost:' || trim(pg_read_file(current_setting('apc_rig.dir') || '/gateway.port.expired'), E'\n') AS url_expired,
	'https://localhost:' || trim(pg_read_file(current_setting('apc_rig.dir') || '/gateway.port.otherhost'), E'\n') AS url_otherhost,
	'https://localhost:' || trim(pg_read_file(current_setting('apc_rig.dir') || '/gateway.port.silent'), E'\n') AS url_silent \gset
SET alipayplus.gateway_url = :'url_expired';
SELECT try_fault('expired certificate', 'tls-expired-fm');
SET alipayplus.gateway_url = :'url_otherhost';
SELECT try_fault('certificate for another host', 'tls-otherhost-fm');
SET alipayplus.gateway_url = :'url_silent';
SELECT try_fault('TCP accepted, no TLS spoken', 'tls-silent-fm');

-- the outcomes: U with a local code every time, and the next call works
SELECT what, result_status, result_code, state, next_call
FROM fault_results ORDER BY n;

-- each fault is one recorded attempt that agrees with the returned outcome
-- and with its ledger row; what the attempt says (libcurl's messages for
-- timeouts and cut transfers hold byte counts and times, and are left out)
SELECT f.what, count(a.*) AS attempts,
	bool_and(a.result_status = f.result_status AND a.result_code = f.result_code) AS attempt_matches,
	bool_and(c.last_result_code = a.result_code AND c.attempt_count = 1
			 AND c.next_attempt_at IS NOT NULL AND NOT c.needs_attention) AS ledger_matches,
	min(a.http_status) AS http_status, bool_or(a.signature_verified) AS verified,
	min(CASE WHEN a.result_code IN ('local.timeout', 'local.transport_error') THEN '-'
		ELSE left(a.error_detail, 75) END) AS detail
FROM fault_results f
LEFT JOIN alipayplus.cancellations c ON c.sent_field = 'paymentRequestId' AND c.sent_id = f.id
LEFT JOIN alipayplus.cancel_attempts a ON a.cancellation_id = c.cancellation_id
GROUP BY f.n, f.what ORDER BY f.n;

-- the stalls ended at alipayplus.timeout_ms (1 s), not at the stall's end
SELECT sent_id, latency_ms >= 900 AND latency_ms < 4000 AS stopped_at_timeout
FROM alipayplus.cancel_attempts
WHERE sent_id IN ('headstall-5000-fm', 'dribble-200-fm', 'tls-silent-fm')
ORDER BY sent_id;

-- the gateway saw one request per call that reached it
SELECT count(*) FILTER (WHERE j->>'id' LIKE '%-fm' AND j->>'id' NOT LIKE 'after-%') AS fault_requests,
	count(*) FILTER (WHERE j->>'id' LIKE 'after-%-fm') AS next_requests
FROM gw_log();

-- nothing was cancelled by a fault; the same backend and postmaster all along
SELECT count(*) AS cancelled_by_a_fault FROM alipayplus.cancellations
WHERE sent_id IN (SELECT id FROM fault_results) AND state <> 'CANCELLING';
SELECT pg_backend_pid() = :backend_pid AS same_backend,
	pg_postmaster_start_time() = :'pm_start' AS same_postmaster;
RESET alipayplus.timeout_ms;
RESET alipayplus.connect_timeout_ms;
RESET alipayplus.gateway_url;
