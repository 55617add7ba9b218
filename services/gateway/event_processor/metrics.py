"""Event processor metrics (the first three names are fixed in docs/reference.md, "Metrics")."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PROCESSED = Counter("event_processor_events_processed_total", "Events newly stored in PostgreSQL")
EVENTS_FAILED = Counter(
    "event_processor_events_failed_total",
    "Messages not stored (sent to the dead-letter topic), by reason",
    ["reason"],
)
EVENT_LATENCY = Histogram(
    "event_processor_latency_seconds",
    "Processing latency: received by the fleet (gateway stamp, else Kafka record time) to stored",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
EVENT_TIME_DELAY = Histogram(
    "event_processor_event_time_delay_seconds",
    "Event-time delay: the event's own timestamp to stored (backdated or replayed events are late here)",
    buckets=(0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
EVENTS_DUPLICATE = Counter(
    "event_processor_events_duplicate_total", "Redelivered or re-sent events that were already stored"
)
DEAD_LETTERED = Counter("event_processor_dead_lettered_total", "Messages written to the dead-letter topic")
STORE_SECONDS = Histogram(
    "event_processor_store_seconds",
    "Duration of one batch insert",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORE_RETRIES = Counter(
    "event_processor_store_retries_total",
    "Batch store attempts that failed because the database was unavailable",
)
BATCH_SIZE = Histogram(
    "event_processor_batch_records",
    "Records per processed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000),
)
PAUSED = Gauge("event_processor_paused", "1 while consumption is paused because the database is unavailable")
COMMIT_FAILURES = Counter(
    "event_processor_commit_failures_total",
    "Offset commits refused (usually a rebalance); the batch is redelivered",
)

CONSUMER_LAG_MESSAGES = Gauge(
    "event_processor_consumer_lag_messages",
    "Messages in the partition not yet consumed (high watermark - position)",
    ["topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "event_processor_consumer_lag_seconds",
    "Age of the oldest message not yet processed (0 when caught up)",
    ["topic", "partition"],
)

# Every reason exists from the start at 0, so alerts on rate() see the first failure.
DLQ_REASONS = (
    "empty",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "invalid_timestamp",
    "oversized",
    "rejected_by_database",
)
for _reason in DLQ_REASONS:
    EVENTS_FAILED.labels(reason=_reason)
