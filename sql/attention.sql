--
-- attention: closing the items of alipayplus.attention (who, when, why), a
-- late paid notification on a flagged or cancelled row, and the advice for
-- an exhausted local.bad_signature.  A shop's set-up: a non-superuser owner
-- of the orders table with its own trigger, a varchar(20) domain for the
-- status, and an ops role that closes items.
--
SET client_min_messages = warning;
DROP EXTENSION alipayplus_cancel CASCADE;
CREATE EXTENSION alipayplus_cancel;
DROP SCHEMA IF EXISTS att_shop CASCADE;
DROP ROLE IF EXISTS regress_att_owner;
DROP ROLE IF EXISTS regress_att_ops;
DROP ROLE IF EXISTS regress_att_other;
RESET client_min_messages;
SET alipayplus.retry_base_ms = 0;
CREATE ROLE regress_att_owner;
CREATE ROLE regress_att_ops;
CREATE ROLE regress_att_other;
CREATE SCHEMA att_shop AUTHORIZATION regress_att_owner;
SET ROLE regress_att_owner;
CREATE DOMAIN att_shop.status AS varchar(20) CHECK (VALUE = upper(VALUE));
CREATE TABLE att_shop.orders (
	req text PRIMARY KEY,
	status att_shop.status NOT NULL DEFAULT 'PENDING',
	changes int NOT NULL DEFAULT 0
);
CREATE FUNCTION att_shop.count_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.changes := OLD.changes + 1;
	RETURN NEW;
END;
$$;
CREATE TRIGGER count_changes BEFORE UPDATE ON att_shop.orders
	FOR EACH ROW EXECUTE FUNCTION att_shop.count_changes();
INSERT INTO att_shop.orders (req) VALUES ('f-PROCESS_FAIL-att-1'), ('f-PROCESS_FAIL-att-2'),
	('att-late-3'), ('badsig-att-4'), ('att-queued-5');
RESET ROLE;
SELECT alipayplus_bind_orders('att_shop.orders', 'req', 'status', 'CANCELLED', 'CANCELLING',
	paid_value => 'PAID', failed_value => 'FAILED');
GRANT USAGE ON SCHEMA alipayplus TO regress_att_ops;
GRANT SELECT ON alipayplus.attention, alipayplus.cancellations TO regress_att_ops;
GRANT EXECUTE ON FUNCTION alipayplus_close_attention(bigint, text) TO regress_att_ops;

-- not for everybody
SELECT has_function_privilege('public', 'alipayplus_close_attention(bigint, text)', 'EXECUTE') AS public_execute;

-- two refused cancellations (F PROCESS_FAIL), one cancelled, one queued
SELECT state FROM alipayplus_cancel_payment(payment_request_id => 'f-PROCESS_FAIL-att-1');
SELECT state FROM alipayplus_cancel_payment(payment_request_id => 'f-PROCESS_FAIL-att-2');
SELECT state FROM alipayplus_cancel_payment(payment_request_id => 'att-late-3');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'att-queued-5');
SELECT cancellation_id AS id1 FROM alipayplus.cancellations WHERE sent_id = 'f-PROCESS_FAIL-att-1' \gset
SELECT cancellation_id AS id2 FROM alipayplus.cancellations WHERE sent_id = 'f-PROCESS_FAIL-att-2' \gset
SELECT cancellation_id AS id3 FROM alipayplus.cancellations WHERE sent_id = 'att-late-3' \gset
SELECT cancellation_id AS id5 FROM alipayplus.cancellations WHERE sent_id = 'att-queued-5' \gset

-- late paid notifications: on a cancelled row and on a flagged one
SELECT alipayplus_apply_payment_result('att-late-3', 'S', 'SUCCESS');
SELECT alipayplus_apply_payment_result('f-PROCESS_FAIL-att-2', 'S');
-- an F notification is no news for a person
SELECT alipayplus_apply_payment_result('att-queued-5', 'F');
SELECT sent_id, state, regexp_replace(reason, 'arrived at .* after', 'arrived at <time> after') AS reason
FROM alipayplus.attention ORDER BY cancellation_id;

-- a person closes them, as ops
SELECT reason AS reason1 FROM alipayplus.attention WHERE cancellation_id = :id1 \gset
SET ROLE regress_att_ops;
SELECT sent_id, state, needs_attention, attention_reason, attention_closed_by,
	attention_closed_session_user = session_user AS session_user_kept,
	attention_closed_at <= clock_timestamp() AS closed_at_kept,
	attention_closed_note, attention_closed_reason = :'reason1' AS reason_kept
FROM alipayplus_close_attention(:id1, 'refunded as RF-1, ticket 11');
SELECT sent_id, attention_closed_by, attention_closed_note,
	regexp_replace(attention_closed_reason, 'arrived at .* after', 'arrived at <time> after') AS attention_closed_reason
FROM alipayplus_close_attention(:id3, 'inquiryPayment says CANCELLED; nothing to refund');
SELECT sent_id FROM alipayplus.attention ORDER BY cancellation_id;

-- refused: the item is not open any more, never was, no such row, no reason
SELECT split_part(errcheck(format('SELECT alipayplus_close_attention(%s, %L)', :id1, 'again')), ' DETAIL', 1);
SELECT errcheck(format('SELECT alipayplus_close_attention(%s, %L)', :id5, 'nothing to close'));
SELECT errcheck($$SELECT alipayplus_close_attention(999999, 'no such row')$$);
SELECT errcheck(format('SELECT alipayplus_close_attention(%s, %L)', :id2, '  '));
SELECT errcheck(format('SELECT alipayplus_close_attention(%s, NULL)', :id2));
RESET ROLE;
SET ROLE regress_att_other;
SELECT errcheck(format('SELECT alipayplus_close_attention(%s, %L)', :id2, 'not mine'));
RESET ROLE;

-- a later paid notification opens a closed item again, and can be closed again
SELECT pg_sleep(0.01);
SELECT alipayplus_apply_payment_result('att-late-3', 'S', 'SUCCESS');
SELECT sent_id FROM alipayplus.attention ORDER BY cancellation_id;
SET ROLE regress_att_ops;
SELECT attention_closed_note FROM alipayplus_close_attention(:id3, 'the same notification sent again');
RESET ROLE;

-- the closed flagged row stays CANCELLING, out of the queue, and its order follows the ledger
SELECT c.sent_id, c.state, c.next_attempt_at, o.status
FROM alipayplus.cancellations c JOIN att_shop.orders o ON o.req = c.sent_id
WHERE c.cancellation_id IN (:id1, :id3) ORDER BY c.cancellation_id;
-- and the queue figures do not count it: only att-queued-5 waits for a call
SELECT s.queued, q.queued AS depth_queued,
	(SELECT count(*) FROM alipayplus.cancellations x
	 WHERE x.state = 'CANCELLING' AND NOT x.needs_attention) AS cancelling_not_flagged
FROM alipayplus.stats s, alipayplus_queue_depth() q;
-- a manual update is still refused by the table's own rule
SELECT split_part(errcheck(format('UPDATE alipayplus.cancellations SET needs_attention = false WHERE cancellation_id = %s', :id2)), ' DETAIL', 1);
-- and a half-closed row cannot be written
SELECT split_part(errcheck(format('UPDATE alipayplus.cancellations SET attention_closed_at = now() WHERE cancellation_id = %s', :id2)), ' DETAIL', 1);

-- local.bad_signature until the attempts run out: our own settings, not Alipay+ support
SET alipayplus.max_attempts = 2;
SELECT result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'badsig-att-4');
SELECT result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'badsig-att-4');
SELECT needs_attention, attention_reason LIKE '%alipayplus.public_key_file%' AS names_public_key,
	attention_reason LIKE '%alipayplus.private_key_file%' AS names_private_key,
	attention_reason LIKE '%alipayplus.client_id%' AS names_client_id,
	attention_reason LIKE '%connect_support%' AS sends_to_alipay_support,
	attention_reason
FROM alipayplus.cancellations WHERE sent_id = 'badsig-att-4';
-- (the built-in note it quotes); an Alipay+ U that runs out still goes to Alipay+ support
SELECT note FROM alipayplus.result_policy WHERE result_code = 'local.bad_signature';
SET alipayplus.max_attempts = 1;
SELECT result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'u-UNKNOWN_EXCEPTION-att-6');
SELECT attention_reason FROM alipayplus.cancellations WHERE sent_id = 'u-UNKNOWN_EXCEPTION-att-6';
RESET alipayplus.max_attempts;

-- closing it, then asking again: a new flag opens a new item
SELECT cancellation_id AS id4 FROM alipayplus.cancellations WHERE sent_id = 'badsig-att-4' \gset
SET ROLE regress_att_ops;
SELECT attention_closed_note FROM alipayplus_close_attention(:id4, 'public key file replaced');
RESET ROLE;
SELECT count(*) AS open_for_4 FROM alipayplus.attention WHERE cancellation_id = :id4;
SELECT state FROM alipayplus_requeue_cancellation(:id4);
SET alipayplus.max_attempts = 2;
SELECT result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'badsig-att-4');
SELECT result_code, state FROM alipayplus_cancel_payment(payment_request_id => 'badsig-att-4');
SELECT count(*) AS open_for_4, bool_and(reason LIKE '%public_key_file%') AS names_key
FROM alipayplus.attention WHERE cancellation_id = :id4;
RESET alipayplus.max_attempts;
-- the previous closure is still on record until the new item is closed
SELECT attention_closed_note FROM alipayplus.cancellations WHERE cancellation_id = :id4;

-- an item derived from the row (still CANCELLING past its deadline) closes
-- the same way and comes back with the next attempt
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'u-UNKNOWN_EXCEPTION-att-7');
SELECT cancellation_id AS id7 FROM alipayplus.cancellations WHERE sent_id = 'u-UNKNOWN_EXCEPTION-att-7' \gset
UPDATE alipayplus.cancellations SET deadline = now() - interval '1 minute',
	next_attempt_at = now() + interval '1 hour' WHERE cancellation_id = :id7;
SELECT sent_id, reason LIKE 'still CANCELLING after the cancel deadline%' AS past_deadline
FROM alipayplus.attention WHERE cancellation_id = :id7;
SET ROLE regress_att_ops;
SELECT attention_closed_note FROM alipayplus_close_attention(:id7, 'refund started');
RESET ROLE;
SELECT count(*) AS open_for_7 FROM alipayplus.attention WHERE cancellation_id = :id7;
UPDATE alipayplus.cancellations SET next_attempt_at = now() WHERE cancellation_id = :id7;
SELECT claimed, retrying FROM alipayplus_process_cancellations(10, '10 s');
SELECT count(*) AS open_for_7, bool_and(reason LIKE 'still CANCELLING after the cancel deadline%') AS past_deadline
FROM alipayplus.attention WHERE cancellation_id = :id7;

-- the owner's trigger saw every change of the orders the ledger made
SELECT req, status, changes FROM att_shop.orders ORDER BY req;

-- a verified S whose order could not follow (the owner's trigger refused):
-- its remedy is requeue, so it cannot be closed and stays visible
SET ROLE regress_att_owner;
INSERT INTO att_shop.orders (req) VALUES ('att-blocked-8'), ('att-su-9'), ('att-never-10'),
	('att-never-11'), ('att-paid-12');
CREATE FUNCTION att_shop.refuse_blocked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.req = 'att-blocked-8' AND NEW.status = 'CANCELLED' THEN
		RAISE EXCEPTION 'shop rule: att-blocked-8 cannot be cancelled yet';
	END IF;
	RETURN NEW;
END;
$$;
CREATE TRIGGER refuse_blocked BEFORE UPDATE ON att_shop.orders
	FOR EACH ROW EXECUTE FUNCTION att_shop.refuse_blocked();
RESET ROLE;
SELECT state FROM alipayplus_cancel_payment(payment_request_id => 'att-blocked-8');
SELECT state, needs_attention FROM alipayplus.cancellations WHERE sent_id = 'att-blocked-8';
SELECT cancellation_id AS id8 FROM alipayplus.cancellations WHERE sent_id = 'att-blocked-8' \gset
SET ROLE regress_att_ops;
SELECT split_part(errcheck(format('SELECT alipayplus_close_attention(%s, %L)', :id8, 'looked at it')), ' DETAIL', 1);
RESET ROLE;
SELECT sent_id, state, reason LIKE 'Alipay+ cancelled the payment (verified S%' AS verified_s
FROM alipayplus.attention WHERE cancellation_id = :id8;
-- the shop fixes its rule; requeue makes the order follow
DROP TRIGGER refuse_blocked ON att_shop.orders;
SELECT state, needs_attention FROM alipayplus_requeue_cancellation(:id8);
SELECT status FROM att_shop.orders WHERE req = 'att-blocked-8';

-- a later U (or F) notification does not replace a paid one nobody closed
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'att-su-9');
SELECT alipayplus_apply_payment_result('att-su-9', 'S', 'SUCCESS');
SELECT alipayplus_apply_payment_result('att-su-9', 'U', 'UNKNOWN_EXCEPTION');
SELECT alipayplus_apply_payment_result('att-su-9', 'F', 'ORDER_CLOSED');
SELECT c.late_payment_status, c.late_payment_code, a.reason LIKE 'a paid notification (S SUCCESS)%' AS shows_paid
FROM alipayplus.cancellations c LEFT JOIN alipayplus.attention a USING (cancellation_id)
WHERE c.sent_id = 'att-su-9';
-- once closed, a later notification is recorded as usual
SELECT cancellation_id AS id9 FROM alipayplus.cancellations WHERE sent_id = 'att-su-9' \gset
SELECT attention_closed_note FROM alipayplus_close_attention(:id9, 'inquiryPayment: not paid after all');
SELECT alipayplus_apply_payment_result('att-su-9', 'F', 'ORDER_CLOSED');
SELECT late_payment_status, late_payment_code FROM alipayplus.cancellations WHERE cancellation_id = :id9;

-- closing closes the reasons present then; one that arises later opens
-- again, even with no attempt since (an item closed an hour ago on rows
-- never attempted: one fell overdue after the close, one passed its
-- deadline after the close)
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'att-never-10');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'att-never-11');
SELECT alipayplus_apply_payment_result('att-never-10', 'S');
SELECT alipayplus_apply_payment_result('att-never-11', 'S');
SELECT count(x.attention_closed_note) AS closed FROM alipayplus.cancellations c,
	alipayplus_close_attention(c.cancellation_id, 'refund will follow the cancel outcome') x
WHERE c.sent_id IN ('att-never-10', 'att-never-11');
UPDATE alipayplus.cancellations SET late_payment_at = now() - interval '61 minutes',
	attention_closed_at = now() - interval '60 minutes',
	next_attempt_at = CASE sent_id WHEN 'att-never-10' THEN now() - interval '59 minutes'
		ELSE now() + interval '1 hour' END,
	deadline = CASE sent_id WHEN 'att-never-11' THEN now() - interval '30 minutes' ELSE deadline END
WHERE sent_id IN ('att-never-10', 'att-never-11');
SELECT c.sent_id, c.last_attempt_at IS NULL AS never_attempted,
	regexp_replace(a.reason, '\w{3} \w{3} \d\d \d\d:\d\d:\d\d(\.\d+)? \d{4} \w+', '<time>') AS reason
FROM alipayplus.cancellations c LEFT JOIN alipayplus.attention a USING (cancellation_id)
WHERE c.sent_id IN ('att-never-10', 'att-never-11') ORDER BY c.sent_id;
-- but a reason present at the close stays closed
UPDATE alipayplus.cancellations SET deadline = now() - interval '90 minutes'
WHERE sent_id = 'att-never-11';
SELECT count(*) AS open_for_11 FROM alipayplus.attention WHERE sent_id = 'att-never-11';

-- an order already paid when its cancellation is requested: requested all
-- the same, but the paid value it loses shows as an item
SELECT alipayplus_apply_payment_result('att-paid-12', 'S');
SELECT status FROM att_shop.orders WHERE req = 'att-paid-12';
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'att-paid-12');
SELECT c.late_payment_status, c.late_payment_code, o.status,
	regexp_replace(a.reason, '\w{3} \w{3} \d\d \d\d:\d\d:\d\d(\.\d+)? \d{4} \w+', '<time>') AS reason
FROM alipayplus.cancellations c JOIN att_shop.orders o ON o.req = c.sent_id
LEFT JOIN alipayplus.attention a USING (cancellation_id)
WHERE c.sent_id = 'att-paid-12';
