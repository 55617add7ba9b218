-- The replica keeps only its primary key (time, event_id): every extra index costs the bulk
-- insert about a third of its speed (measured by bench/replication.py), and the replica's
-- readers scan time ranges, which the primary key already serves.
-- The watermark row exists from the start, so the first batch can lock it FOR UPDATE.
INSERT INTO replication_state (stream, last_xid, last_seq, rows_total)
VALUES ('access_events', '0'::xid8, 0, 0)
ON CONFLICT (stream) DO NOTHING;
