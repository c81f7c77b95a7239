--
-- config: settings are checked when set; a missing or broken setting is a
-- clear error before anything is marked or sent.
--
SELECT gw_mark();
-- settings are checked by the library: load it first, as any call would
LOAD 'alipayplus_cancel';

-- bad values are refused when set
SELECT errcheck($$SET alipayplus.gateway_url = 'http://localhost:1'$$);
SELECT errcheck($$SET alipayplus.gateway_url = 'https://localhost:1/aps'$$);
SELECT errcheck($$SET alipayplus.gateway_url = 'https://'$$);
SELECT errcheck($$SET alipayplus.cancel_path = 'aps/api'$$);
SELECT errcheck($$SET alipayplus.client_id = 'a.b'$$);
SELECT errcheck($$SET alipayplus.timeout_ms = 0$$);
-- there is no setting that turns TLS verification off
SELECT count(*) AS verify_settings FROM pg_settings
WHERE name LIKE 'alipayplus.%' AND (name LIKE '%verify%' OR name LIKE '%insecure%');

-- missing settings
SET alipayplus.gateway_url = '';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-1')$$);
RESET alipayplus.gateway_url;
SET alipayplus.client_id = '';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-2')$$);
RESET alipayplus.client_id;
SET alipayplus.private_key_file = '';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-3')$$);
SELECT errcheck($$SELECT alipayplus_signature('/p', 'c', 't', 'b')$$);

-- unusable key files: absent, not a key, readable by others, a directory
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/absent.pem';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-4')$$);
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/garbage.pem';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-5')$$);
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys/world_readable.pem';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-6')$$);
SET alipayplus.private_key_file = '/tmp/alipayplus_rig/keys';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-7')$$);
RESET alipayplus.private_key_file;
SET alipayplus.public_key_file = '/tmp/alipayplus_rig/keys/garbage.pem';
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => 'cfg-9')$$);
RESET alipayplus.public_key_file;

-- none of that marked anything or reached the gateway
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations WHERE payment_request_id LIKE 'cfg-%';
SELECT count(*) AS attempts FROM alipayplus.cancel_attempts WHERE sent_id LIKE 'cfg-%';
SELECT count(*) AS gateway_requests FROM gw_log();

-- settings are for superusers; key file names are hidden from others
CREATE ROLE apc_config_user;
SET ROLE apc_config_user;
SELECT errcheck($$SET alipayplus.gateway_url = 'https://evil.example'$$);
SELECT errcheck($$SET alipayplus.ca_file = '/tmp/x'$$);
SELECT errcheck($$SHOW alipayplus.private_key_file$$);
SELECT errcheck($$SHOW alipayplus.public_key_file$$);
SELECT name FROM pg_settings WHERE name LIKE 'alipayplus.%' ORDER BY 1;
RESET ROLE;
DROP ROLE apc_config_user;
