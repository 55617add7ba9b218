-- The coarse levels of the people and hours rollups (months, ISO weeks) are built from their
-- fine levels (days) once a bucket has ended and has settled, instead of being upserted by every
-- refresh batch.
--
-- Rolling an event up cost the database more than storing it (1.3 to 1.5 times: `bench
-- patterns`), and two of the six statements of a refresh batch were the upserts into
-- `access_rollup_people_month` and `access_rollup_hours_week`, which repeat for the month and
-- the week what the day tables' upserts already do. EXPLAIN ANALYZE of a 200,000-event batch of a
-- live stream: 407 ms and 358 ms of 1,890 ms. A query reads a month from its table only when its
-- range holds the whole month, which for the month under way only a range without an end does,
-- so building each month once, from its day rows, is enough. Rolling up 400,000 events in two batches and
-- building the months and weeks they touched, two runs each, alternating with 0009's refresh:
-- on a live stream of `bench patterns`' site (a few day rows per person and door a day) 2.19-2.20 s
-- against 3.37-3.58 s; on a worst case (a year, a million people: nearly every event a day row
-- and a month row of its own, where the build costs nearly what the refresh does) 12.0-13.5 s
-- against 17.2-17.8 s. There the build is paid once per month; the upserts were paid by every
-- batch.
--
-- `access_rollup_stale` lists the coarse buckets whose day rows a refresh changed since the
-- bucket was last built. A refresh marks them in the same transaction as the day rows and the
-- watermark, and `access_rollups_compact` rebuilds a bucket and unmarks it in one transaction,
-- so in any snapshot a coarse bucket either equals the sum of its days or is marked; readers
-- read a marked bucket from the day table (services/analytics/rollups.py). The refresh stays
-- exact for late events: a batch with events of a bucket already built marks it again.
--
-- The refresh also computes less per event: the UTC day and hour with date_bin (integer
-- arithmetic) instead of date_trunc(..., 'UTC') (a time zone conversion; 0.3 and 0.2 µs an
-- event), and the hourly time groups' hour of day and weekday from their bucket instead of
-- from every event. Refreshing 400,000 events of a live stream of `bench patterns`' site in two
-- batches, three runs each, alternating: 1.58-1.65 s against 1.91-2.07 s for this migration's
-- refresh without it (18 % less); on the worst case above, 2-4 % less.
--
-- A bucket is rebuilt once it has ended (by the database's clock) and no refresh has touched it
-- for `settled`: the month under way is touched by every batch of a live stream, and rebuilding
-- it after each would read its days again and again. Existing coarse rows stay as they are:
-- until this migration, every batch upserted them with the day rows, so they hold exactly what
-- the day tables hold.

CREATE TABLE IF NOT EXISTS access_rollup_stale (
    rollup     TEXT        NOT NULL CHECK (rollup IN ('people', 'hours')),
    bucket     TIMESTAMPTZ NOT NULL,
    touched_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rollup, bucket)
);

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
    -- Per event, only what cannot wait for a group: date_bin from a UTC midnight is the UTC
    -- day (and hour) in integer arithmetic, where date_trunc(..., 'UTC') converts time zones;
    -- the hourly groups' hour of day and weekday follow from their bucket.
    WITH batch AS MATERIALIZED (
        SELECT time, facility_id, person_id, door_id, access_result, badge_status, ingest_xid, seq,
               date_part('hour', time AT TIME ZONE 'UTC')::smallint AS hr,
               date_bin('1 day', time, timestamptz '2000-01-03 00:00:00+00') AS day_bucket
          FROM access_events
         WHERE ingest_xid < pg_snapshot_xmin(pg_current_snapshot())
           AND (ingest_xid, seq) > (mark_xid, mark_seq)
         ORDER BY ingest_xid, seq
         LIMIT max_rows
    ),
    time_fine AS MATERIALIZED (
        SELECT bucket, facility_id,
               date_part('hour', bucket AT TIME ZONE 'UTC')::smallint AS hr,
               date_part('isodow', bucket AT TIME ZONE 'UTC')::smallint AS dow,
               access_result, badge_status, n, first_time, last_time
          FROM (SELECT date_bin('1 hour', time, timestamptz '2000-01-03 00:00:00+00') AS bucket,
                       facility_id, access_result, badge_status,
                       count(*) AS n, min(time) AS first_time, max(time) AS last_time
                  FROM batch GROUP BY 1, 2, 3, 4) AS hourly
    ),
    time_month AS (
        INSERT INTO access_rollup_time_month AS r
        SELECT date_trunc('month', bucket, 'UTC'), facility_id, hr, dow, access_result, badge_status,
               sum(n), min(first_time), max(last_time)
          FROM time_fine GROUP BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (bucket, facility_id, hr, dow, access_result, badge_status) DO UPDATE
           SET n = r.n + EXCLUDED.n,
               first_time = least(r.first_time, EXCLUDED.first_time),
               last_time = greatest(r.last_time, EXCLUDED.last_time)
    ),
    time_hour AS (
        INSERT INTO access_rollup_time_hour AS r
        SELECT bucket, facility_id, hr, dow, access_result, badge_status, n, first_time, last_time
          FROM time_fine
        ON CONFLICT (bucket, facility_id, hr, dow, access_result, badge_status) DO UPDATE
           SET n = r.n + EXCLUDED.n,
               first_time = least(r.first_time, EXCLUDED.first_time),
               last_time = greatest(r.last_time, EXCLUDED.last_time)
    ),
    stale AS (
        INSERT INTO access_rollup_stale AS s (rollup, bucket, touched_at)
        SELECT rollup, bucket, now()
          FROM (SELECT DISTINCT date_trunc('day', bucket, 'UTC') AS day FROM time_fine) AS days
         CROSS JOIN LATERAL (VALUES ('people', date_trunc('month', day, 'UTC')),
                                    ('hours', date_trunc('week', day, 'UTC'))) AS coarse (rollup, bucket)
         GROUP BY 1, 2
        ON CONFLICT (rollup, bucket) DO UPDATE SET touched_at = EXCLUDED.touched_at
    ),
    people_day AS (
        INSERT INTO access_rollup_people_day AS r
        SELECT day_bucket, facility_id, person_id, door_id, access_result, count(*)
          FROM batch GROUP BY 1, 2, 3, 4, 5
         ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (bucket, facility_id, person_id, door_id, access_result) DO UPDATE
           SET n = r.n + EXCLUDED.n
    ),
    hours_day AS (
        INSERT INTO access_rollup_hours_day AS r
        SELECT day_bucket, facility_id, person_id,
               count(*) FILTER (WHERE hr = 0), count(*) FILTER (WHERE hr = 1), count(*) FILTER (WHERE hr = 2), count(*) FILTER (WHERE hr = 3),
               count(*) FILTER (WHERE hr = 4), count(*) FILTER (WHERE hr = 5), count(*) FILTER (WHERE hr = 6), count(*) FILTER (WHERE hr = 7),
               count(*) FILTER (WHERE hr = 8), count(*) FILTER (WHERE hr = 9), count(*) FILTER (WHERE hr = 10), count(*) FILTER (WHERE hr = 11),
               count(*) FILTER (WHERE hr = 12), count(*) FILTER (WHERE hr = 13), count(*) FILTER (WHERE hr = 14), count(*) FILTER (WHERE hr = 15),
               count(*) FILTER (WHERE hr = 16), count(*) FILTER (WHERE hr = 17), count(*) FILTER (WHERE hr = 18), count(*) FILTER (WHERE hr = 19),
               count(*) FILTER (WHERE hr = 20), count(*) FILTER (WHERE hr = 21), count(*) FILTER (WHERE hr = 22), count(*) FILTER (WHERE hr = 23)
          FROM batch GROUP BY 1, 2, 3
         ORDER BY 1, 2, 3
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


-- Rebuilds at most `max_buckets` marked coarse buckets that have ended and were last touched at
-- least `settled` ago, oldest touch first; returns how many. It takes the refresh's lock (the
-- state row), so no refresh changes a bucket's days while it is rebuilt, and returns 0 when a
-- refresh holds it.
CREATE OR REPLACE FUNCTION access_rollups_compact(settled INTERVAL, max_buckets INTEGER) RETURNS INTEGER
LANGUAGE plpgsql
SET jit = off
SET work_mem = '256MB'
SET timezone = 'UTC'  -- month and week arithmetic on timestamptz follows the session's zone
AS $$
DECLARE
    marked record;
    done   integer := 0;
BEGIN
    PERFORM 1 FROM access_rollup_state WHERE id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    FOR marked IN
        SELECT rollup, bucket,
               bucket + CASE rollup WHEN 'people' THEN interval '1 month' ELSE interval '7 days' END AS bucket_end
          FROM access_rollup_stale
         WHERE touched_at <= now() - settled
           AND bucket + CASE rollup WHEN 'people' THEN interval '1 month' ELSE interval '7 days' END <= now()
         ORDER BY touched_at
         LIMIT max_buckets
    LOOP
        IF marked.rollup = 'people' THEN
            DELETE FROM access_rollup_people_month WHERE bucket = marked.bucket;
            INSERT INTO access_rollup_people_month
            SELECT marked.bucket, facility_id, person_id, door_id, access_result, sum(n)
              FROM access_rollup_people_day
             WHERE bucket >= marked.bucket AND bucket < marked.bucket_end
             GROUP BY facility_id, person_id, door_id, access_result;
        ELSE
            DELETE FROM access_rollup_hours_week WHERE bucket = marked.bucket;
            INSERT INTO access_rollup_hours_week
            SELECT marked.bucket, facility_id, person_id,
               sum(h00)::integer, sum(h01)::integer, sum(h02)::integer, sum(h03)::integer, sum(h04)::integer, sum(h05)::integer,
               sum(h06)::integer, sum(h07)::integer, sum(h08)::integer, sum(h09)::integer, sum(h10)::integer, sum(h11)::integer,
               sum(h12)::integer, sum(h13)::integer, sum(h14)::integer, sum(h15)::integer, sum(h16)::integer, sum(h17)::integer,
               sum(h18)::integer, sum(h19)::integer, sum(h20)::integer, sum(h21)::integer, sum(h22)::integer, sum(h23)::integer
              FROM access_rollup_hours_day
             WHERE bucket >= marked.bucket AND bucket < marked.bucket_end
             GROUP BY facility_id, person_id;
        END IF;
        DELETE FROM access_rollup_stale WHERE rollup = marked.rollup AND bucket = marked.bucket;
        done := done + 1;
    END LOOP;
    RETURN done;
END
$$;
