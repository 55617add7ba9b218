"""Event processor metrics (names fixed by CONTRACT section 6)."""

from prometheus_client import Counter, Histogram

EVENTS_PROCESSED = Counter("event_processor_events_processed_total", "Events newly stored in PostgreSQL")
EVENTS_DUPLICATE = Counter(
    "event_processor_events_duplicate_total", "Redelivered or re-sent events that were already stored"
)
EVENTS_FAILED = Counter("event_processor_events_failed_total", "Events not stored, by reason", ["reason"])
EVENT_LATENCY = Histogram(
    "event_processor_latency_seconds",
    "Event timestamp to stored in PostgreSQL",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
STORE_SECONDS = Histogram(
    "event_processor_store_seconds", "Duration of one batch insert",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "event_processor_batch_records", "Records per processed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000),
)
