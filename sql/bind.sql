--
-- bind: identifiers and values are quoted safely; the status column may
-- be of any type that takes the values (here an enum)
--
-- rows earlier suites left backing off stay out of this suite's runs
UPDATE alipayplus.cancellations SET next_attempt_at = next_attempt_at + interval '1 day'
WHERE state = 'CANCELLING' AND next_attempt_at IS NOT NULL;
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Order""s" (
	"Req Id" text PRIMARY KEY,
	"St;atus" text NOT NULL DEFAULT 'NEW',
	"When" timestamptz NOT NULL DEFAULT now()
);
INSERT INTO "Odd Schema"."Order""s" ("Req Id") VALUES ('odd-1'), ('odd-2');
-- shop_orders still has orders cancelling (flagged by earlier suites): a
-- new binding would strand them and is refused (sql/lost_answers.sql); this
-- suite moves the binding on purpose, so a superuser deletes it first
DELETE FROM alipayplus.order_binding;
SELECT alipayplus_bind_orders('"Odd Schema"."Order""s"', 'Req Id', 'St;atus',
	'CANCEL''D', 'CANCEL''ING', initiated_at_column => 'When', paid_value => 'PA''ID');
SELECT orders, request_id_column, status_column, cancelled_value, cancelling_value
FROM alipayplus.order_binding;
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'odd-1');
SELECT alipayplus_apply_payment_result('odd-2', 'S');
SELECT "Req Id", "St;atus" FROM "Odd Schema"."Order""s" ORDER BY 1;
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT "Req Id", "St;atus" FROM "Odd Schema"."Order""s" ORDER BY 1;
SELECT errcheck($$UPDATE "Odd Schema"."Order""s" SET "St;atus" = 'NEW' WHERE "Req Id" = 'odd-1'$$);

-- an enum status column
CREATE TYPE order_state AS ENUM ('NEW', 'PAID', 'CANCELLING', 'CANCELLED');
CREATE TABLE enum_orders (req varchar(64) PRIMARY KEY, st order_state NOT NULL DEFAULT 'NEW');
INSERT INTO enum_orders VALUES ('enum-1'), ('enum-2');
SELECT alipayplus_bind_orders('enum_orders', 'req', 'st', 'CANCELLED', 'CANCELLING', paid_value => 'PAID');
SELECT state FROM alipayplus_request_cancel(payment_request_id => 'enum-1');
SELECT alipayplus_apply_payment_result('enum-2', 'S');
SELECT claimed, cancelled FROM alipayplus_process_cancellations();
SELECT * FROM enum_orders ORDER BY 1;
SELECT errcheck($$UPDATE enum_orders SET st = 'PAID' WHERE req = 'enum-1'$$);
SELECT errcheck($$SELECT alipayplus_bind_orders('enum_orders', 'req', 'st', 'GONE', 'CANCELLING')$$);
