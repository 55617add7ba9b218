-- Rollups of access_events, so that analyses over months of history read a few thousand
-- aggregate rows instead of every event (the model is TimescaleDB's continuous aggregates with
-- real-time aggregation, built on plain tables).
--
-- Each rollup counts events per bucket of event time (UTC), facility and a few dimensions, at
-- a coarse level (month) for the bulk of a range and a fine level (hour or day) for the parts
-- of a range that do not cover a whole month. Readers add raw rows only for the partial
-- buckets at the ends of their range and for rows not rolled up yet.
--
-- Rows are rolled up in commit order, like the replicator reads them: `access_rollups_refresh`
-- takes the rows after the watermark (ingest_xid, seq) whose transaction is below the xmin of
-- its snapshot (every such transaction has finished, so no row can appear behind the
-- watermark later), adds their counts, and moves the watermark, in one transaction. So the
-- rollups hold exactly the rows at or below the watermark: a redelivered event that ON CONFLICT
-- DO NOTHING skipped is not a row and is never counted, uploads (COPY, staging, INSERT) are
-- rows like any other, and a reader that takes the rollups, the watermark and the raw rows
-- after it from one snapshot counts every row exactly once.
--
-- Refreshing outside the writer's transaction keeps ingestion at one statement per batch: an
-- upsert of every person/door group per stored batch costs about as much as the insert itself,
-- while the refresh aggregates tens of thousands of rows per statement.

CREATE TABLE IF NOT EXISTS access_rollup_state (
    id          BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (id),
    last_xid    XID8        NOT NULL DEFAULT '0',
    last_seq    BIGINT      NOT NULL DEFAULT 0,
    rows_total  BIGINT      NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO access_rollup_state DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Every refresh updates counts in place: pages kept 30 % free let those updates stay on the
-- page (HOT) without a new index entry.

-- Time of day, weekday, result and badge status: totals, by hour, by weekday, first and last
-- event. badge_status and facility_id may be NULL: the unique indexes treat NULLs as equal.
CREATE TABLE IF NOT EXISTS access_rollup_time_month (
    bucket        TIMESTAMPTZ NOT NULL,
    facility_id   TEXT,
    hr            SMALLINT    NOT NULL,
    dow           SMALLINT    NOT NULL,
    access_result TEXT        NOT NULL,
    badge_status  TEXT,
    n             BIGINT      NOT NULL,
    first_time    TIMESTAMPTZ NOT NULL,
    last_time     TIMESTAMPTZ NOT NULL
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS access_rollup_time_month_key ON access_rollup_time_month
    (bucket, facility_id, hr, dow, access_result, badge_status) NULLS NOT DISTINCT;
CREATE TABLE IF NOT EXISTS access_rollup_time_hour (LIKE access_rollup_time_month) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS access_rollup_time_hour_key ON access_rollup_time_hour
    (bucket, facility_id, hr, dow, access_result, badge_status) NULLS NOT DISTINCT;

-- Person, door and result: per-user and per-door counts, person-door pairs, distinct people.
CREATE TABLE IF NOT EXISTS access_rollup_people_month (
    bucket        TIMESTAMPTZ NOT NULL,
    facility_id   TEXT,
    person_id     TEXT        NOT NULL,
    door_id       TEXT        NOT NULL,
    access_result TEXT        NOT NULL,
    n             BIGINT      NOT NULL
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS access_rollup_people_month_key ON access_rollup_people_month
    (bucket, facility_id, person_id, door_id, access_result) NULLS NOT DISTINCT;
CREATE TABLE IF NOT EXISTS access_rollup_people_day (LIKE access_rollup_people_month) WITH (fillfactor = 70);
CREATE UNIQUE INDEX IF NOT EXISTS access_rollup_people_day_key ON access_rollup_people_day
    (bucket, facility_id, person_id, door_id, access_result) NULLS NOT DISTINCT;

-- No person-by-hour rollup for the anomaly detector: its analysis is bounded to a window of at
-- most 92 days, needs the raw denials and flagged rows of that window anyway, and a person's
-- (hour, facility) cells hardly repeat within a refresh: that table took half of the refresh's
-- time to save one of the detector's scans.

-- Roll up at most `max_rows` rows after the watermark; returns how many were rolled up (0 when
-- caught up, or when another session is refreshing right now: refreshes never queue).
-- Sorts and bitmap scans are off for the batch read for the replicator's reason: with stale
-- statistics after a bulk load the planner sorted the whole backlog for every batch. JIT is off
-- because the penalty cost of a disabled plan node is far above jit_above_cost: compiling the
-- statement took seconds while running it takes milliseconds. The batch is scanned once per
-- rollup: with the default work_mem it spilled to disk and every scan read it back.
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
