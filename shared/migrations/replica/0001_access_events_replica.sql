-- The replica of access_events in the replication target. Primary key (time, event_id), as
-- docs/reference.md ("Access events") fixes it: a hypertable's unique keys include its time column.
CREATE TABLE IF NOT EXISTS access_events_replica (
    time                TIMESTAMPTZ NOT NULL,
    event_id            TEXT        NOT NULL,
    person_id           TEXT        NOT NULL,
    door_id             TEXT        NOT NULL,
    badge_id            TEXT,
    access_result       TEXT        NOT NULL,
    badge_status        TEXT,
    door_held_open_time DOUBLE PRECISION NOT NULL DEFAULT 0,
    entry_without_badge BOOLEAN     NOT NULL DEFAULT FALSE,
    device_status       TEXT        NOT NULL DEFAULT 'normal',
    facility_id         TEXT,
    extra               JSONB,
    ingested_at         TIMESTAMPTZ,
    source_seq          BIGINT      NOT NULL,
    replicated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (time, event_id)
);

-- The replicator's progress marker, written in the same transaction as the rows it covers.
CREATE TABLE IF NOT EXISTS replication_state (
    stream      TEXT        PRIMARY KEY,
    last_xid    XID8,
    last_seq    BIGINT      NOT NULL DEFAULT 0,
    rows_total  BIGINT      NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
