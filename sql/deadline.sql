--
-- deadline: 00:15 UTC+8 on the day after the UTC+8 calendar day of the
-- payment; open strictly before it; the session time zone does not matter
--
CREATE TEMP TABLE zones (tz text);
INSERT INTO zones VALUES ('UTC'), ('America/New_York'), ('Asia/Shanghai'),
	('Pacific/Kiritimati'), ('Pacific/Pago_Pago');

-- the edges on T: 23:59:59 and 00:00:00 UTC+8 belong to different days
CREATE TEMP TABLE edges (label text, initiated timestamptz, at timestamptz);
INSERT INTO edges VALUES
	('T 23:59:59, at T+1 00:14:59', '2025-01-15 23:59:59+08', '2025-01-16 00:14:59+08'),
	('T 23:59:59, at T+1 00:15:00', '2025-01-15 23:59:59+08', '2025-01-16 00:15:00+08'),
	('T 00:00:00, at T+1 00:14:59', '2025-01-16 00:00:00+08', '2025-01-17 00:14:59+08'),
	('T 00:00:00, at T+1 00:15:00', '2025-01-16 00:00:00+08', '2025-01-17 00:15:00+08'),
	('T 00:00:00, at T 23:59:59', '2025-01-16 00:00:00+08', '2025-01-16 23:59:59+08'),
	('T 12:00, at T+1 00:14:59.999999', '2025-01-15 12:00:00+08', '2025-01-16 00:14:59.999999+08'),
	('T 00:14:59 UTC+8 (T-1 in UTC), at T+1 00:14:59', '2025-01-16 00:14:59+08', '2025-01-17 00:14:59+08');

SELECT label,
	to_char(alipayplus_cancel_deadline(initiated) AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI:SS') || ' UTC+8' AS deadline,
	alipayplus_cancel_window_open(initiated, at) AS open
FROM edges ORDER BY label;

-- the same answers in every session time zone
DO $$
DECLARE
	z text;
	bad int := 0;
BEGIN
	FOR z IN SELECT tz FROM zones LOOP
		PERFORM set_config('timezone', z, true);
		SELECT count(*) INTO bad FROM edges
		WHERE alipayplus_cancel_deadline(initiated) <>
				(date_trunc('day', initiated AT TIME ZONE 'Asia/Shanghai') + interval '1 day 15 minutes') AT TIME ZONE 'Asia/Shanghai'
			OR alipayplus_cancel_window_open(initiated, at) <> (at < (date_trunc('day', initiated AT TIME ZONE 'Asia/Shanghai') + interval '1 day 15 minutes') AT TIME ZONE 'Asia/Shanghai');
		RAISE NOTICE 'time zone %: % disagreement(s)', z, bad;
	END LOOP;
END;
$$;
SET timezone = 'America/New_York';
SELECT alipayplus_cancel_deadline('2025-01-15 23:59:59+08') AS deadline_in_new_york;
SET timezone = 'Pacific/Kiritimati';
SELECT alipayplus_cancel_deadline('2025-01-15 23:59:59+08') AS deadline_in_kiritimati;
RESET timezone;

-- a request past the deadline is refused before anything changes
SELECT gw_mark();
SELECT errcheck($$SELECT alipayplus_request_cancel(payment_request_id => 'dl-late', initiated_at => '2025-01-15 12:00:00+08')$$);
SELECT count(*) AS ledger_rows FROM alipayplus.cancellations WHERE payment_request_id = 'dl-late';
SELECT count(*) AS gateway_requests FROM gw_log();
-- within the window it is queued, with its deadline
SELECT state, deadline = alipayplus_cancel_deadline(now()) AS deadline_stored
FROM alipayplus_request_cancel(payment_request_id => 'dl-fresh', initiated_at => now());
