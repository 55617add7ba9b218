-- Indexes for the questions asked of the replica (per person and per door over time), and the
-- commit-order watermark of the rows copied so far.
CREATE INDEX IF NOT EXISTS access_events_replica_person_time_idx ON access_events_replica (person_id, time DESC);
CREATE INDEX IF NOT EXISTS access_events_replica_door_time_idx ON access_events_replica (door_id, time DESC);

INSERT INTO replication_state (stream, last_xid, last_seq, rows_total)
VALUES ('access_events', '0'::xid8, 0, 0)
ON CONFLICT (stream) DO NOTHING;
