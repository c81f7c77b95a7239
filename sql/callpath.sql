--
-- callpath: edges of the call path, one section each: what a response may
-- carry, how keys and settings are read, what ends up in the tables.
--
SELECT gw_mark();

--
-- A foreign Client-Id is never accepted, signed or not
--
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'unsigned-otherclient-F-ACCESS_DENIED-cp');
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'unsigned-otherclient-U-UNKNOWN_EXCEPTION-cp');
-- unsigned F and U without a Client-Id header are still taken as they say
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'unsigned-F-ACCESS_DENIED-cp');
SELECT sent_id, result_status, result_code, signature_verified, error_detail
FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'unsigned-%-cp' ORDER BY attempt_id;

--
-- Signature header: field names in any case, blanks around '=' and ',';
-- an algorithm other than RSA256 is refused (test vector B)
--
CREATE TEMP TABLE vb AS SELECT
	'/aps/api/v1/payments/cancelPayment'::text AS path,
	'SANDBOX_5X00000000000000'::text AS client_id,
	'2025-01-15T10:30:01+08:00'::text AS rtime,
	'{"acquirerId":"1022188000000000001","pspId":"1022172000000000001","result":{"resultCode":"SUCCESS","resultMessage":"success.","resultStatus":"S"}}'::text AS body,
	'OmLFosr9Z8Y2vv0qyMgvmgJJHm8z0Gj%2FgNEJl3STcq%2FLdqkE7KQqWNgEwJr14XZuO9ics3P0nE1LJJsGCBX36DFCmQd5AfnIB00qQ%2FQ92LhenHdQ3kk%2FhCJwm0l7o3%2BIcSlFwdImfZSJCVyh%2BkyJGH1aDD%2BbEESeDcdC8Uo57y3kJjLi1HcBulY2ytekJOfOY8OaPqCbhGKXc%2FTlBWROSUgFN8M6hTPEZ3s1SzjW%2BwlpEPyLhr5QCjy0JOX77s3MgUS284KtaqwxHlWTbl5h5HnNOr%2B1%2BYQiDrST8aqc5YS7LOuJf4Gbv14tm5H5B9UXFacxUrev%2BtM4Jwtt2O%2B9NQ%3D%3D'::text AS sig,
	pg_read_file('/tmp/alipayplus_rig/keys/vector_b_pub.pem') AS pub;
-- the same signature, not percent-encoded: it ends in '=' padding
ALTER TABLE vb ADD COLUMN raw text;
UPDATE vb SET raw = replace(replace(replace(sig, '%2F', '/'), '%2B', '+'), '%3D', '=');
SELECT raw ~ '==$' AS raw_ends_in_padding FROM vb;

SELECT h.header_kind, alipayplus_verify(path, client_id, rtime, body, h.header, pub) AS verified
FROM vb, LATERAL (VALUES
	('SIGNATURE = <enc>', 'SIGNATURE = ' || sig),
	('Signature=<enc>', 'Signature=' || sig),
	('algorithm = RSA256 , signature = <enc>', 'algorithm = RSA256 , signature = ' || sig),
	('ALGORITHM=rsa256,KEYVERSION=1,SIGNATURE=<enc>', 'ALGORITHM=rsa256,KEYVERSION=1,SIGNATURE=' || sig),
	('tabs and a trailing comma', E'algorithm\t=\tRSA256,\tkeyVersion = 1,\tsignature =\t' || sig || ','),
	('signature=<raw base64 with padding>', 'signature=' || raw),
	('Signature = <raw base64 with padding>', 'Signature = ' || raw),
	('<raw base64 with padding>', raw),
	(' <raw base64 with padding> ', ' ' || raw || ' '),
	('<enc>', sig),
	-- refused
	('algorithm=ECC224,signature=<enc>', 'algorithm=ECC224,signature=' || sig),
	('Algorithm = RSA512 , Signature = <enc>', 'Algorithm = RSA512 , Signature = ' || sig),
	('algorithm=,signature=<enc>', 'algorithm=,signature=' || sig),
	('two signature fields', 'signature=' || sig || ',signature=' || sig),
	('two algorithm fields', 'algorithm=RSA256,algorithm=ECC224,signature=' || sig),
	('no signature field', 'algorithm=RSA256,keyVersion=1'),
	('a list element that is no field', 'algorithm=RSA256,' || sig)
) AS h(header_kind, header);

-- the gateway: another spelling verifies (S); algorithm ECC224 does not (U)
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'casedsig-cp');
SELECT gw_last('casedsig-cp')->>'outcome' AS outcome;
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'ecc224-cp');
SELECT sent_id, result_status, result_code, signature_verified, error_detail
FROM alipayplus.cancel_attempts WHERE sent_id IN ('casedsig-cp', 'ecc224-cp') ORDER BY attempt_id;

--
-- Key file names are shown only to roles that may read the settings
--
CREATE ROLE apc_callpath_user;
CREATE ROLE apc_callpath_reader IN ROLE pg_read_all_settings;
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys/absent_callpath.pem';
-- a superuser sees the name
SELECT errcheck($$SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x')$$);
SET ROLE apc_callpath_reader;
SELECT errcheck($$SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x')$$);
-- others do not (alipayplus_verify is executable by PUBLIC)
SET ROLE apc_callpath_user;
SELECT errcheck($$SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x')$$);
-- uncaught, so that the server log gets it, with the name in its DETAIL
SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x');
RESET ROLE;
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys/garbage.pem';
SET ROLE apc_callpath_user;
SELECT errcheck($$SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x')$$);
RESET ROLE;
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys';
SET ROLE apc_callpath_user;
SELECT errcheck($$SELECT alipayplus_verify('/p', 'c', 't', '{}', 'x')$$);
RESET ROLE;
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys/world_readable.pem';
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/world_readable.pem';
GRANT EXECUTE ON FUNCTION alipayplus_signature(text, text, text, text) TO apc_callpath_user;
SET ROLE apc_callpath_user;
SELECT errcheck($$SELECT alipayplus_signature('/p', 'c', 't', '{}')$$);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION alipayplus_signature(text, text, text, text) FROM apc_callpath_user;
RESET alipayplus.private_key_file;
RESET alipayplus.public_key_file;
-- the server log names the file for the administrator
SELECT pg_read_file('/tmp/alipayplus_rig/postgres.log')
	~ 'ERROR:  could not access the key file named by alipayplus\.public_key_file: No such file or directory\n[^\n]*DETAIL:  The file is "/tmp/alipayplus_rig/keys/absent_callpath\.pem"\.'
	AS name_in_server_log;
DROP ROLE apc_callpath_user;
DROP ROLE apc_callpath_reader;

--
-- alipayplus.client_id is bounded; long headers are sent whole
--
LOAD 'alipayplus_cancel';
SELECT replace(errcheck(format('SET alipayplus.client_id = %L', repeat('A', 200))),
	repeat('A', 200), '<200 x A>') AS client_id_200;
SELECT errcheck(format('SET alipayplus.client_id = %L', repeat('A', 128))) AS client_id_128;
RESET alipayplus.client_id;
SELECT errcheck($$SET alipayplus.client_id = 'SANDBOX 5X'$$) AS client_id_blank;
SELECT errcheck($$SET alipayplus.client_id = 'SANDBOX_5Xé'$$) AS client_id_non_ascii;
-- (a SET that errcheck() did not refuse stays in force)
RESET alipayplus.client_id;
SHOW alipayplus.client_id;
-- the longest client id goes out whole (the gateway knows another one)
SELECT length(set_config('alipayplus.client_id', repeat('A', 128), false)) AS client_id_bytes;
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'cp-client128');
SELECT j->>'client_id' = repeat('A', 128) AS client_id_sent_whole
FROM gw_log() WHERE j->>'id' = 'cp-client128';
RESET alipayplus.client_id;
-- a 4096-bit key and the largest key version: a long Signature header
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client4096.pem';
SET alipayplus.key_version = 2147483647;
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'cp-4096');
SELECT (j->>'signature_valid')::boolean AS signature_valid,
	length(j->>'signature_header') > 700 AS long_header,
	j->>'signature_header' ~ '^algorithm=RSA256,keyVersion=2147483647,signature=[A-Za-z0-9%]+$' AS header_format
FROM gw_log() WHERE j->>'id' = 'cp-4096';
RESET alipayplus.key_version;
RESET alipayplus.private_key_file;

--
-- Text from the network is stored valid, escaped and capped
--
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'otherclientbytes-cp');
SELECT error_detail, length(convert_to(error_detail, 'UTF8')) > 0 AS valid_utf8
FROM alipayplus.cancel_attempts WHERE sent_id = 'otherclientbytes-cp';
-- a long resultMessage with control characters
SELECT result_status, result_code, octet_length(result_message) AS message_bytes,
	left(result_message, 30) AS message_start, right(result_message, 5) AS message_end
FROM alipayplus_cancel_payment(payment_request_id => 'longmsg-cp');

--
-- A key file rewritten in place, same size, mtime restored, is noticed
--
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys/scratch_pub.pem';
COPY (SELECT 1) TO PROGRAM 'cp /tmp/alipayplus_rig/keys/gateway_pub.pem /tmp/alipayplus_rig/keys/scratch_pub.pem';
CREATE TEMP TABLE signed (signer text, header text);
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/gateway.pem';
INSERT INTO signed SELECT 'gateway', alipayplus_signature('/p', 'c', 't', 'b');
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client.pem';
INSERT INTO signed SELECT 'client', alipayplus_signature('/p', 'c', 't', 'b');
RESET alipayplus.private_key_file;
SELECT signer, alipayplus_verify('/p', 'c', 't', 'b', header) AS verified
FROM signed ORDER BY signer;
-- same size (a PEM public key of a 2048-bit RSA key is 451 bytes), same inode
COPY (SELECT 1) TO PROGRAM 'cd /tmp/alipayplus_rig/keys && stat -c "%s %i %y" scratch_pub.pem > scratch_before && m=$(stat -c %y scratch_pub.pem) && cat client_pub.pem > scratch_pub.pem && touch -d "$m" scratch_pub.pem && stat -c "%s %i %y" scratch_pub.pem > scratch_after';
SELECT pg_read_file('/tmp/alipayplus_rig/keys/scratch_before') = pg_read_file('/tmp/alipayplus_rig/keys/scratch_after')
	AS same_size_inode_mtime;
SELECT signer, alipayplus_verify('/p', 'c', 't', 'b', header) AS verified
FROM signed ORDER BY signer;
RESET alipayplus.public_key_file;

--
-- Parsing a response never raises an error
--
-- nested 100000 levels deep in an ignored field
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'deepjson-cp');
SELECT 1 AS backend_alive;
-- \u escapes and raw UTF-8 in resultMessage (this database is UTF-8)
SELECT result_status, result_code, result_message, state
FROM alipayplus_cancel_payment(payment_request_id => 'unicode-cp');
-- other escapes are kept as they are; 64 levels of nesting are fine
SELECT result_status, result_code, result_message, state
FROM alipayplus_cancel_payment(payment_request_id => 'escapes-cp');
-- a body that ends inside a \u escape
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'cutescape-cp');

--
-- The response size cap holds for a chunked body (no Content-Length)
--
SELECT result_status, result_code, state
FROM alipayplus_cancel_payment(payment_request_id => 'chunked-cp');
SELECT 1 AS backend_alive;

--
-- what the attempts say
--
SELECT sent_id, result_status, result_code, http_status, signature_verified,
	left(regexp_replace(error_detail, '\d+', 'N', 'g'), 72) AS detail
FROM alipayplus.cancel_attempts
WHERE sent_id LIKE '%-cp' OR sent_id LIKE 'cp-%'
ORDER BY attempt_id;

-- the key is taken again after marking: a trigger that reloads the key
-- cache while the payment is marked does not leave the call a freed key
CREATE FUNCTION reload_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('alipayplus.private_key_file', '/tmp/alipayplus_rig/keys/client4096.pem', true);
	PERFORM alipayplus._check_config();
	RETURN NEW;
END $$;
CREATE TRIGGER reload_key AFTER INSERT ON alipayplus.cancellations
	FOR EACH ROW EXECUTE FUNCTION reload_key();
SELECT result_status, result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'cp-reload-1');
DROP TRIGGER reload_key ON alipayplus.cancellations;
DROP FUNCTION reload_key();
