-- The replicator reads access_events in commit order: (ingest_xid, seq) greater than its
-- watermark and ingest_xid below the snapshot's xmin. This index makes each batch and the
-- backlog probe an index range scan instead of a sort of the whole table.
CREATE INDEX IF NOT EXISTS access_events_replication_cursor_idx ON access_events (ingest_xid, seq);
