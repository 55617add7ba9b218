"""Replicator metrics (the first three names are fixed in docs/reference.md, "Metrics")."""

from prometheus_client import Counter, Gauge, Histogram

LAG_SECONDS = Gauge(
    "replication_lag_seconds", "NOW() minus the time of the newest replicated event (grows when idle)"
)
BACKLOG_SECONDS = Gauge(
    "replication_backlog_seconds",
    "Age of the oldest event stored in the primary but not yet replicated; 0 when caught up",
)
ROWS_TOTAL = Counter("replication_rows_total", "Rows newly written to the replica")
BATCH_SECONDS = Histogram(
    "replication_batch_duration_seconds",
    "Duration of one replication batch (read, copy, insert, commit)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_ROWS = Histogram(
    "replication_batch_rows",
    "Rows per replication batch",
    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000),
)
ERRORS = Counter(
    "replication_errors_total", "Failed replication cycles, by the database that failed", ["database"]
)
WATERMARK_SEQ = Gauge("replication_watermark_seq", "Source seq of the last replicated row in commit order")
UP = Gauge("replication_database_up", "1 when the last operation on the database succeeded", ["database"])
