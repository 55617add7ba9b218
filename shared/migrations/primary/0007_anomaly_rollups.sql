-- The anomaly detector's inputs from rollups and indexes instead of scans of its whole window.
--
-- Its heaviest input is every person's hour-of-day profile over the window (how many of their
-- events fall in each UTC hour of the day). `access_rollup_hours_*` holds it per bucket,
-- facility and person, one column per hour of the day: one row per person a bucket touches,
-- where a row per (person, hour) cell took half of the refresh's time (a person's cells hardly
-- repeat within a refresh). The window is at most 92 days and rarely whole months, so the
-- levels are ISO weeks (Monday 00:00 UTC) for the bulk and days at either end; raw rows only
-- for the partial day at each end and for rows after the watermark, as in migration 0006.
--
-- The rest of its inputs are rare rows, found by partial indexes over event time instead of a
-- scan of the window: denials (for the bursts), granted-with-an-invalid-badge, entries without
-- a badge, and doors held open longer than 30 s (the detector adds that bound to its query
-- when its threshold is at least 30 s, so the index answers the default threshold; a lower one
-- scans the window). They cost the store path only for the rows they hold.

CREATE TABLE IF NOT EXISTS access_rollup_hours_week (
    bucket      TIMESTAMPTZ NOT NULL,
    facility_id TEXT,
    person_id   TEXT        NOT NULL,
    h00 INTEGER NOT NULL,
    h01 INTEGER NOT NULL,
    h02 INTEGER NOT NULL,
    h03 INTEGER NOT NULL,
    h04 INTEGER NOT NULL,
    h05 INTEGER NOT NULL,
    h06 INTEGER NOT NULL,
    h07 INTEGER NOT NULL,
    h08 INTEGER NOT NULL,
    h09 INTEGER NOT NULL,
    h10 INTEGER NOT NULL,
    h11 INTEGER NOT NULL,
    h12 INTEGER NOT NULL,
    h13 INTEGER NOT NULL,
    h14 INTEGER NOT NULL,
    h15 INTEGER NOT NULL,
    h16 INTEGER NOT NULL,
    h17 INTEGER NOT NULL,
    h18 INTEGER NOT NULL,
    h19 INTEGER NOT NULL,
    h20 INTEGER NOT NULL,
    h21 INTEGER NOT NULL,
    h22 INTEGER NOT NULL,
    h23 INTEGER NOT NULL
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS access_rollup_hours_week_key ON access_rollup_hours_week
    (bucket, facility_id, person_id) NULLS NOT DISTINCT;
CREATE TABLE IF NOT EXISTS access_rollup_hours_day (LIKE access_rollup_hours_week) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS access_rollup_hours_day_key ON access_rollup_hours_day
    (bucket, facility_id, person_id) NULLS NOT DISTINCT;

CREATE INDEX IF NOT EXISTS access_events_denied_idx ON access_events (time)
    INCLUDE (person_id, door_id, event_id, facility_id) WHERE access_result = 'Denied';
CREATE INDEX IF NOT EXISTS access_events_invalid_granted_idx ON access_events (time, event_id)
    INCLUDE (facility_id) WHERE access_result = 'Granted' AND badge_status IN ('Expired', 'Suspended');
CREATE INDEX IF NOT EXISTS access_events_without_badge_idx ON access_events (time, event_id)
    INCLUDE (facility_id) WHERE entry_without_badge;
CREATE INDEX IF NOT EXISTS access_events_held_open_idx ON access_events (time, event_id)
    INCLUDE (facility_id) WHERE door_held_open_time > 30;

-- Rows already rolled up by 0006's refresh go into the new tables now, with the watermark held
-- (no refresh moves it meanwhile), so every rollup holds exactly the rows at or below it.
SELECT 1 FROM access_rollup_state WHERE id FOR UPDATE;
INSERT INTO access_rollup_hours_week
SELECT date_trunc('week', time, 'UTC'), facility_id, person_id,
       count(*) FILTER (WHERE hr = 0), count(*) FILTER (WHERE hr = 1), count(*) FILTER (WHERE hr = 2), count(*) FILTER (WHERE hr = 3),
       count(*) FILTER (WHERE hr = 4), count(*) FILTER (WHERE hr = 5), count(*) FILTER (WHERE hr = 6), count(*) FILTER (WHERE hr = 7),
       count(*) FILTER (WHERE hr = 8), count(*) FILTER (WHERE hr = 9), count(*) FILTER (WHERE hr = 10), count(*) FILTER (WHERE hr = 11),
       count(*) FILTER (WHERE hr = 12), count(*) FILTER (WHERE hr = 13), count(*) FILTER (WHERE hr = 14), count(*) FILTER (WHERE hr = 15),
       count(*) FILTER (WHERE hr = 16), count(*) FILTER (WHERE hr = 17), count(*) FILTER (WHERE hr = 18), count(*) FILTER (WHERE hr = 19),
       count(*) FILTER (WHERE hr = 20), count(*) FILTER (WHERE hr = 21), count(*) FILTER (WHERE hr = 22), count(*) FILTER (WHERE hr = 23)
  FROM (SELECT e.time, e.facility_id, e.person_id,
               extract(hour FROM e.time AT TIME ZONE 'UTC')::smallint AS hr
          FROM access_events e, access_rollup_state s
         WHERE s.id AND (e.ingest_xid, e.seq) <= (s.last_xid, s.last_seq)) AS rolled_up
 GROUP BY 1, 2, 3;
INSERT INTO access_rollup_hours_day
SELECT date_trunc('day', time, 'UTC'), facility_id, person_id,
       count(*) FILTER (WHERE hr = 0), count(*) FILTER (WHERE hr = 1), count(*) FILTER (WHERE hr = 2), count(*) FILTER (WHERE hr = 3),
       count(*) FILTER (WHERE hr = 4), count(*) FILTER (WHERE hr = 5), count(*) FILTER (WHERE hr = 6), count(*) FILTER (WHERE hr = 7),
       count(*) FILTER (WHERE hr = 8), count(*) FILTER (WHERE hr = 9), count(*) FILTER (WHERE hr = 10), count(*) FILTER (WHERE hr = 11),
       count(*) FILTER (WHERE hr = 12), count(*) FILTER (WHERE hr = 13), count(*) FILTER (WHERE hr = 14), count(*) FILTER (WHERE hr = 15),
       count(*) FILTER (WHERE hr = 16), count(*) FILTER (WHERE hr = 17), count(*) FILTER (WHERE hr = 18), count(*) FILTER (WHERE hr = 19),
       count(*) FILTER (WHERE hr = 20), count(*) FILTER (WHERE hr = 21), count(*) FILTER (WHERE hr = 22), count(*) FILTER (WHERE hr = 23)
  FROM (SELECT e.time, e.facility_id, e.person_id,
               extract(hour FROM e.time AT TIME ZONE 'UTC')::smallint AS hr
          FROM access_events e, access_rollup_state s
         WHERE s.id AND (e.ingest_xid, e.seq) <= (s.last_xid, s.last_seq)) AS rolled_up
 GROUP BY 1, 2, 3;

-- The refresh of migration 0006, which now also adds the hour profiles.
CREATE OR REPLACE FUNCTION access_rollups_refresh(max_rows INTEGER) RETURNS BIGINT
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET jit = off
SET work_mem = '256MB'
AS $$
DECLARE
    mark_xid xid8;
    mark_seq bigint;
    done     bigint;
    new_xid  xid8;
    new_seq  bigint;
BEGIN
    SELECT last_xid, last_seq INTO mark_xid, mark_seq
      FROM access_rollup_state WHERE id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    WITH batch AS MATERIALIZED (
        SELECT time, facility_id, person_id, door_id, access_result, badge_status, ingest_xid, seq,
               extract(hour FROM time AT TIME ZONE 'UTC')::smallint AS hr,
               extract(isodow FROM time AT TIME ZONE 'UTC')::smallint AS dow
          FROM access_events
         WHERE ingest_xid < pg_snapshot_xmin(pg_current_snapshot())
           AND (ingest_xid, seq) > (mark_xid, mark_seq)
         ORDER BY ingest_xid, seq
         LIMIT max_rows
    ),
    time_month AS (
        INSERT INTO access_rollup_time_month AS r
        SELECT date_trunc('month', time, 'UTC'), facility_id, hr, dow, access_result, badge_status,
               count(*), min(time), max(time)
          FROM batch GROUP BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (bucket, facility_id, hr, dow, access_result, badge_status) DO UPDATE
           SET n = r.n + EXCLUDED.n,
               first_time = least(r.first_time, EXCLUDED.first_time),
               last_time = greatest(r.last_time, EXCLUDED.last_time)
    ),
    time_hour AS (
        INSERT INTO access_rollup_time_hour AS r
        SELECT date_trunc('hour', time, 'UTC'), facility_id, hr, dow, access_result, badge_status,
               count(*), min(time), max(time)
          FROM batch GROUP BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (bucket, facility_id, hr, dow, access_result, badge_status) DO UPDATE
           SET n = r.n + EXCLUDED.n,
               first_time = least(r.first_time, EXCLUDED.first_time),
               last_time = greatest(r.last_time, EXCLUDED.last_time)
    ),
    people_month AS (
        INSERT INTO access_rollup_people_month AS r
        SELECT date_trunc('month', time, 'UTC'), facility_id, person_id, door_id, access_result, count(*)
          FROM batch GROUP BY 1, 2, 3, 4, 5
        ON CONFLICT (bucket, facility_id, person_id, door_id, access_result) DO UPDATE
           SET n = r.n + EXCLUDED.n
    ),
    people_day AS (
        INSERT INTO access_rollup_people_day AS r
        SELECT date_trunc('day', time, 'UTC'), facility_id, person_id, door_id, access_result, count(*)
          FROM batch GROUP BY 1, 2, 3, 4, 5
        ON CONFLICT (bucket, facility_id, person_id, door_id, access_result) DO UPDATE
           SET n = r.n + EXCLUDED.n
    ),
    hours_week AS (
        INSERT INTO access_rollup_hours_week AS r
        SELECT date_trunc('week', time, 'UTC'), facility_id, person_id,
               count(*) FILTER (WHERE hr = 0), count(*) FILTER (WHERE hr = 1), count(*) FILTER (WHERE hr = 2), count(*) FILTER (WHERE hr = 3),
               count(*) FILTER (WHERE hr = 4), count(*) FILTER (WHERE hr = 5), count(*) FILTER (WHERE hr = 6), count(*) FILTER (WHERE hr = 7),
               count(*) FILTER (WHERE hr = 8), count(*) FILTER (WHERE hr = 9), count(*) FILTER (WHERE hr = 10), count(*) FILTER (WHERE hr = 11),
               count(*) FILTER (WHERE hr = 12), count(*) FILTER (WHERE hr = 13), count(*) FILTER (WHERE hr = 14), count(*) FILTER (WHERE hr = 15),
               count(*) FILTER (WHERE hr = 16), count(*) FILTER (WHERE hr = 17), count(*) FILTER (WHERE hr = 18), count(*) FILTER (WHERE hr = 19),
               count(*) FILTER (WHERE hr = 20), count(*) FILTER (WHERE hr = 21), count(*) FILTER (WHERE hr = 22), count(*) FILTER (WHERE hr = 23)
          FROM batch GROUP BY 1, 2, 3
        ON CONFLICT (bucket, facility_id, person_id) DO UPDATE
           SET h00 = r.h00 + EXCLUDED.h00, h01 = r.h01 + EXCLUDED.h01, h02 = r.h02 + EXCLUDED.h02, h03 = r.h03 + EXCLUDED.h03,
               h04 = r.h04 + EXCLUDED.h04, h05 = r.h05 + EXCLUDED.h05, h06 = r.h06 + EXCLUDED.h06, h07 = r.h07 + EXCLUDED.h07,
               h08 = r.h08 + EXCLUDED.h08, h09 = r.h09 + EXCLUDED.h09, h10 = r.h10 + EXCLUDED.h10, h11 = r.h11 + EXCLUDED.h11,
               h12 = r.h12 + EXCLUDED.h12, h13 = r.h13 + EXCLUDED.h13, h14 = r.h14 + EXCLUDED.h14, h15 = r.h15 + EXCLUDED.h15,
               h16 = r.h16 + EXCLUDED.h16, h17 = r.h17 + EXCLUDED.h17, h18 = r.h18 + EXCLUDED.h18, h19 = r.h19 + EXCLUDED.h19,
               h20 = r.h20 + EXCLUDED.h20, h21 = r.h21 + EXCLUDED.h21, h22 = r.h22 + EXCLUDED.h22, h23 = r.h23 + EXCLUDED.h23
    ),
    hours_day AS (
        INSERT INTO access_rollup_hours_day AS r
        SELECT date_trunc('day', time, 'UTC'), facility_id, person_id,
               count(*) FILTER (WHERE hr = 0), count(*) FILTER (WHERE hr = 1), count(*) FILTER (WHERE hr = 2), count(*) FILTER (WHERE hr = 3),
               count(*) FILTER (WHERE hr = 4), count(*) FILTER (WHERE hr = 5), count(*) FILTER (WHERE hr = 6), count(*) FILTER (WHERE hr = 7),
               count(*) FILTER (WHERE hr = 8), count(*) FILTER (WHERE hr = 9), count(*) FILTER (WHERE hr = 10), count(*) FILTER (WHERE hr = 11),
               count(*) FILTER (WHERE hr = 12), count(*) FILTER (WHERE hr = 13), count(*) FILTER (WHERE hr = 14), count(*) FILTER (WHERE hr = 15),
               count(*) FILTER (WHERE hr = 16), count(*) FILTER (WHERE hr = 17), count(*) FILTER (WHERE hr = 18), count(*) FILTER (WHERE hr = 19),
               count(*) FILTER (WHERE hr = 20), count(*) FILTER (WHERE hr = 21), count(*) FILTER (WHERE hr = 22), count(*) FILTER (WHERE hr = 23)
          FROM batch GROUP BY 1, 2, 3
        ON CONFLICT (bucket, facility_id, person_id) DO UPDATE
           SET h00 = r.h00 + EXCLUDED.h00, h01 = r.h01 + EXCLUDED.h01, h02 = r.h02 + EXCLUDED.h02, h03 = r.h03 + EXCLUDED.h03,
               h04 = r.h04 + EXCLUDED.h04, h05 = r.h05 + EXCLUDED.h05, h06 = r.h06 + EXCLUDED.h06, h07 = r.h07 + EXCLUDED.h07,
               h08 = r.h08 + EXCLUDED.h08, h09 = r.h09 + EXCLUDED.h09, h10 = r.h10 + EXCLUDED.h10, h11 = r.h11 + EXCLUDED.h11,
               h12 = r.h12 + EXCLUDED.h12, h13 = r.h13 + EXCLUDED.h13, h14 = r.h14 + EXCLUDED.h14, h15 = r.h15 + EXCLUDED.h15,
               h16 = r.h16 + EXCLUDED.h16, h17 = r.h17 + EXCLUDED.h17, h18 = r.h18 + EXCLUDED.h18, h19 = r.h19 + EXCLUDED.h19,
               h20 = r.h20 + EXCLUDED.h20, h21 = r.h21 + EXCLUDED.h21, h22 = r.h22 + EXCLUDED.h22, h23 = r.h23 + EXCLUDED.h23
    ),
    last_row AS (
        SELECT ingest_xid, seq FROM batch ORDER BY ingest_xid DESC, seq DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM batch), last_row.ingest_xid, last_row.seq
      INTO done, new_xid, new_seq
      FROM (SELECT 1) AS one LEFT JOIN last_row ON TRUE;
    IF done > 0 THEN
        UPDATE access_rollup_state
           SET last_xid = new_xid, last_seq = new_seq, rows_total = rows_total + done, updated_at = now()
         WHERE id;
    END IF;
    RETURN done;
END
$$;
