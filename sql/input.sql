--
-- input: bad ids get a clear error, make no HTTP call, leave no row
--
SELECT gw_mark();
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment()$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(NULL, NULL)$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_id => 'in-1', payment_request_id => 'in-2')$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_request_id => '')$$);
SELECT errcheck($$SELECT * FROM alipayplus_cancel_payment(payment_id => '')$$);
SELECT errcheck(format('SELECT * FROM alipayplus_cancel_payment(payment_request_id => %L)', repeat('x', 65)));
SELECT errcheck(format('SELECT * FROM alipayplus_cancel_payment(payment_request_id => %L)', repeat('ä', 65)));
SELECT errcheck(format('SELECT * FROM alipayplus_cancel_payment(payment_request_id => %L)', E'in-3\n'));
SELECT errcheck(format('SELECT * FROM alipayplus_cancel_payment(payment_request_id => %L)', E'in\t4'));
SELECT errcheck(format('SELECT * FROM alipayplus_cancel_payment(payment_request_id => %L)', E'in-5\x7f'));
-- the same checks guard the outbox
SELECT errcheck($$SELECT alipayplus_request_cancel()$$);
SELECT errcheck(format('SELECT alipayplus_request_cancel(payment_request_id => %L)', repeat('y', 65)));
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_id => 'in-6', payment_request_id => 'in-7')$$);

-- nothing was marked, recorded or sent
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations;
SELECT count(*) AS attempts FROM alipayplus.cancel_attempts;
SELECT count(*) AS gateway_requests FROM gw_log();

-- 64 characters, multibyte ones too, are fine
SELECT result_status, result_code FROM alipayplus_cancel_payment(payment_request_id => repeat('z', 64));
SELECT result_status, result_code FROM alipayplus_cancel_payment(payment_request_id => repeat('ß', 64));
SELECT gw_last(repeat('ß', 64))->>'body' = '{"paymentRequestId":"' || repeat('ß', 64) || '"}' AS utf8_body_sent;
