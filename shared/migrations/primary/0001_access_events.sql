-- Access events as stored by the event processor and uploads.
-- event_id is the idempotency key: every path inserts with ON CONFLICT (event_id) DO NOTHING.
-- seq and ingest_xid give the replicator a progress marker that only grows in commit order
-- (event time does not: late events arrive with old timestamps).
CREATE TABLE IF NOT EXISTS access_events (
    event_id            TEXT        PRIMARY KEY,
    time                TIMESTAMPTZ NOT NULL,
    person_id           TEXT        NOT NULL,
    door_id             TEXT        NOT NULL,
    badge_id            TEXT,
    access_result       TEXT        NOT NULL CHECK (access_result IN ('Granted', 'Denied', 'Timeout', 'Error')),
    badge_status        TEXT        CHECK (badge_status IN ('Valid', 'Invalid', 'Expired', 'Suspended')),
    door_held_open_time DOUBLE PRECISION NOT NULL DEFAULT 0,
    entry_without_badge BOOLEAN     NOT NULL DEFAULT FALSE,
    device_status       TEXT        NOT NULL DEFAULT 'normal',
    facility_id         TEXT,
    extra               JSONB,
    ingested_at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    seq                 BIGINT      GENERATED ALWAYS AS IDENTITY,
    ingest_xid          XID8        NOT NULL DEFAULT pg_current_xact_id()
);

CREATE INDEX IF NOT EXISTS access_events_time_idx ON access_events (time);
CREATE INDEX IF NOT EXISTS access_events_seq_idx ON access_events (seq);
