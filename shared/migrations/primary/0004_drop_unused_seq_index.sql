-- No query of the fleet filters or sorts on access_events (seq) alone: the replicator reads by
-- (ingest_xid, seq), which 0002 indexes. Every index costs each insert a B-tree descent, so
-- this one goes.
DROP INDEX IF EXISTS access_events_seq_idx;
