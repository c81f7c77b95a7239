--
-- signing: test vector B of the spec, the Signature header format, key
-- formats, verification variants, reload and key file changes.
--
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/vector_b.pem';
SET alipayplus.key_version = 1;

-- B1: the request signature, header value exactly as the spec gives it
SELECT alipayplus_signature('/aps/api/v1/payments/cancelPayment',
	'SANDBOX_5X00000000000000', '2025-01-15T10:30:00+08:00',
	'{"paymentRequestId":"PR_20250115_000001"}') AS b1;

-- B2: the response signature verifies with the vector's public key
CREATE TEMP TABLE b2 AS SELECT
	'/aps/api/v1/payments/cancelPayment'::text AS path,
	'SANDBOX_5X00000000000000'::text AS client_id,
	'2025-01-15T10:30:01+08:00'::text AS rtime,
	'{"acquirerId":"1022188000000000001","pspId":"1022172000000000001","result":{"resultCode":"SUCCESS","resultMessage":"success.","resultStatus":"S"}}'::text AS body,
	'OmLFosr9Z8Y2vv0qyMgvmgJJHm8z0Gj%2FgNEJl3STcq%2FLdqkE7KQqWNgEwJr14XZuO9ics3P0nE1LJJsGCBX36DFCmQd5AfnIB00qQ%2FQ92LhenHdQ3kk%2FhCJwm0l7o3%2BIcSlFwdImfZSJCVyh%2BkyJGH1aDD%2BbEESeDcdC8Uo57y3kJjLi1HcBulY2ytekJOfOY8OaPqCbhGKXc%2FTlBWROSUgFN8M6hTPEZ3s1SzjW%2BwlpEPyLhr5QCjy0JOX77s3MgUS284KtaqwxHlWTbl5h5HnNOr%2B1%2BYQiDrST8aqc5YS7LOuJf4Gbv14tm5H5B9UXFacxUrev%2BtM4Jwtt2O%2B9NQ%3D%3D'::text AS sig,
	pg_read_file('/tmp/alipayplus_rig/keys/vector_b_pub.pem') AS pub;

SELECT
	alipayplus_verify(path, client_id, rtime, body, sig, pub) AS bare_value,
	alipayplus_verify(path, client_id, rtime, body,
		'algorithm=RSA256,keyVersion=1,signature=' || sig, pub) AS whole_header,
	alipayplus_verify(path, client_id, rtime, body,
		'algorithm=RSA256, keyVersion=1, signature=' || sig, pub) AS blanks_after_commas,
	alipayplus_verify(path, client_id, rtime, body,
		'signature=' || replace(replace(replace(sig, '%2F', '%2f'), '%2B', '%2b'), '%3D', '%3d'), pub) AS lowercase_hex,
	alipayplus_verify(path, client_id, rtime, body,
		'algorithm=RSA256,keyVersion=1,signature=' || replace(replace(replace(sig, '%2F', '/'), '%2B', '+'), '%3D', '='), pub) AS not_percent_encoded
FROM b2;

-- vector C (test/vectors/README.md): inquiryPayment, the same key pair;
-- the path is part of what is signed, so C1 is not B1's signature
SELECT alipayplus_signature('/aps/api/v1/payments/inquiryPayment',
	'SANDBOX_5X00000000000000', '2025-01-15T10:30:00+08:00',
	'{"paymentRequestId":"PR_20250115_000001"}') = 'algorithm=RSA256,keyVersion=1,signature=eXdi4IiGaKP6Ynz93mM25RaC5xYkhf5z7ZQeaHMyqaWKUpz%2FbQCsIIsfjhK39ZC0p0iIc7ohdEifCaRCrXz6l%2BGGhffYvjF3bRQORqhQTshqQICTIn576ZNt2Ni8pIXyVtb6%2BpS5uGgjZydLlSmBIBdznWWDvlAaKD%2BtDxEpfjOsMSrXphkKnf7AYdgFROpMA%2BK94m%2F3IDzkKg8CRRQlF3fIGVlqu3%2BEtbStJ4FQIedr%2BkoV5eSIqZFG8OyxFlx45X9lVyTVLLxn0QVBYylBW48TvufrVygwBr0evbq%2Fh31fnd80yN0vkhyqHII5L%2Fg0%2F6rPRhhzKL6BcQYalijtMQ%3D%3D' AS c1_matches;
SELECT alipayplus_verify('/aps/api/v1/payments/inquiryPayment', client_id,
		rtime, '{"acquirerId":"1022188000000000001","paymentAmount":{"currency":"SGD","value":"1250"},"paymentId":"20250115194010800100188990000123456","paymentRequestId":"PR_20250115_000001","paymentResult":{"resultCode":"SUCCESS","resultMessage":"success","resultStatus":"S"},"paymentTime":"2025-01-15T10:29:58+08:00","pspId":"1022172000000000001","result":{"resultCode":"SUCCESS","resultMessage":"success","resultStatus":"S"}}',
		'EhaSi7hLkCUVbLkBUdpqjBoRFh3LBoAh9zRu4Tjl2EJ9A74PhA4RpoYuSPbs3%2F7gnVIqFzLZ3ZhEE9lmiltSgBJZZCWx7oPIiwCVCcZumMFfRFPkqx3IcNlVL7p8WcILVca5eDyLxhdoQUYX8kcEGGveEwewjf02I%2FGgZt6iTWFYHO%2F%2BgnRYfHxWmWKmfeCPaNO7C6z2ZRwz1LO26BEwcLh9MizzvjPpAHUqcLP4KfsrcaTn%2B%2FB4omGyTBVjuuPWdANtndR5%2FyHW1p%2BRS5ByObjFysdY6F9FJTFGVBMPcYXT24EpTp22%2BhPCFaMkH6p7lwM97POpsJ%2Bkv5rQZ4%2FruA%3D%3D', pub) AS c2_verifies,
	alipayplus_verify(path, client_id,
		rtime, '{"acquirerId":"1022188000000000001","paymentAmount":{"currency":"SGD","value":"1250"},"paymentId":"20250115194010800100188990000123456","paymentRequestId":"PR_20250115_000001","paymentResult":{"resultCode":"SUCCESS","resultMessage":"success","resultStatus":"S"},"paymentTime":"2025-01-15T10:29:58+08:00","pspId":"1022172000000000001","result":{"resultCode":"SUCCESS","resultMessage":"success","resultStatus":"S"}}',
		'EhaSi7hLkCUVbLkBUdpqjBoRFh3LBoAh9zRu4Tjl2EJ9A74PhA4RpoYuSPbs3%2F7gnVIqFzLZ3ZhEE9lmiltSgBJZZCWx7oPIiwCVCcZumMFfRFPkqx3IcNlVL7p8WcILVca5eDyLxhdoQUYX8kcEGGveEwewjf02I%2FGgZt6iTWFYHO%2F%2BgnRYfHxWmWKmfeCPaNO7C6z2ZRwz1LO26BEwcLh9MizzvjPpAHUqcLP4KfsrcaTn%2B%2FB4omGyTBVjuuPWdANtndR5%2FyHW1p%2BRS5ByObjFysdY6F9FJTFGVBMPcYXT24EpTp22%2BhPCFaMkH6p7lwM97POpsJ%2Bkv5rQZ4%2FruA%3D%3D', pub) AS c2_over_cancel_path
FROM b2;

-- anything changed makes it fail
SELECT
	alipayplus_verify(path, client_id, rtime, body || ' ', sig, pub) AS body_changed,
	alipayplus_verify(path, 'SANDBOX_5X00000000000001', rtime, body, sig, pub) AS client_changed,
	alipayplus_verify(path, client_id, '2025-01-15T10:30:02+08:00', body, sig, pub) AS time_changed,
	alipayplus_verify('/aps/api/v1/payments/pay', client_id, rtime, body, sig, pub) AS path_changed,
	alipayplus_verify(path, client_id, rtime, body, 'X' || sig, pub) AS signature_changed,
	alipayplus_verify(path, client_id, rtime, body, sig,
		pg_read_file('/tmp/alipayplus_rig/keys/client_pub.pem')) AS other_key,
	alipayplus_verify(path, client_id, rtime, body, 'signature=!!!', pub) AS garbage,
	alipayplus_verify(path, client_id, rtime, body, '', pub) AS empty
FROM b2;

-- NULL in, NULL out; a public_key that is no key is an error
SELECT alipayplus_verify(path, NULL, rtime, body, sig, pub) IS NULL AS null_arg FROM b2;
SELECT errcheck($$SELECT alipayplus_verify('/p', 'c', 't', 'b', 'signature=AAAA', 'not a key')$$);

-- the configured Alipay+ public key is the default
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys/vector_b_pub.pem';
SELECT alipayplus_verify(path, client_id, rtime, body, sig) AS configured_key FROM b2;
RESET alipayplus.public_key_file;

-- keyVersion comes from alipayplus.key_version
SET alipayplus.key_version = 3;
SELECT split_part(alipayplus_signature('/p', 'c', 't', 'b'), ',', 1) AS alg,
	   split_part(alipayplus_signature('/p', 'c', 't', 'b'), ',', 2) AS kv;
RESET alipayplus.key_version;

-- one key in PKCS#8 PEM, PKCS#1 PEM, DER and bare base64 signs identically,
-- and the signature verifies with the matching public key
CREATE TEMP TABLE formats (fmt text, header text);
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client.pem';
INSERT INTO formats SELECT 'pkcs8', alipayplus_signature('/p', 'c', 't', '{"a":1}');
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client_pkcs1.pem';
INSERT INTO formats SELECT 'pkcs1', alipayplus_signature('/p', 'c', 't', '{"a":1}');
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client.der';
INSERT INTO formats SELECT 'der', alipayplus_signature('/p', 'c', 't', '{"a":1}');
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client.b64';
INSERT INTO formats SELECT 'base64', alipayplus_signature('/p', 'c', 't', '{"a":1}');
SELECT count(DISTINCT header) AS distinct_signatures, count(*) AS formats FROM formats;
SELECT bool_and(alipayplus_verify('/p', 'c', 't', '{"a":1}', header,
		pg_read_file('/tmp/alipayplus_rig/keys/client_pub.pem'))) AS all_verify
FROM formats;
-- the Alipay+ public key may be bare base64 DER, as the developer center gives it
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/gateway.pem';
SELECT alipayplus_verify('/p', 'c', 't', '{"a":1}',
	alipayplus_signature('/p', 'c', 't', '{"a":1}'),
	pg_read_file('/tmp/alipayplus_rig/keys/gateway_pub.b64')) AS base64_public_key,
	alipayplus_verify('/p', 'c', 't', '{"a":1}',
	alipayplus_signature('/p', 'c', 't', '{"a":2}'),
	pg_read_file('/tmp/alipayplus_rig/keys/gateway_pub.b64')) AS other_body;

-- a changed key file is read again (same name, new content)
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/scratch.pem';
COPY (SELECT 1) TO PROGRAM 'cp /tmp/alipayplus_rig/keys/client.pem /tmp/alipayplus_rig/keys/scratch.pem';
CREATE TEMP TABLE rotation AS
SELECT 1 AS step, alipayplus_signature('/p', 'c', 't', 'b') AS header;
COPY (SELECT 1) TO PROGRAM 'cp /tmp/alipayplus_rig/keys/client2.pem /tmp/alipayplus_rig/keys/scratch.pem';
INSERT INTO rotation SELECT 2, alipayplus_signature('/p', 'c', 't', 'b');
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/client2.pem';
INSERT INTO rotation SELECT 3, alipayplus_signature('/p', 'c', 't', 'b');
SELECT (SELECT header FROM rotation WHERE step = 1) <> (SELECT header FROM rotation WHERE step = 2) AS key_change_seen,
	   (SELECT header FROM rotation WHERE step = 2) = (SELECT header FROM rotation WHERE step = 3) AS new_key_used;

-- pg_reload_conf() takes effect in this running session
RESET alipayplus.private_key_file;
ALTER SYSTEM SET alipayplus.key_version = 7;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT split_part(alipayplus_signature('/p', 'c', 't', 'b'), ',', 2) AS after_reload;
ALTER SYSTEM RESET alipayplus.key_version;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT split_part(alipayplus_signature('/p', 'c', 't', 'b'), ',', 2) AS after_reset;
