"""Event processor settings: the fleet's, plus the consumer's batching, bounds and group.

The processor is deployed on its own (`python -m services.gateway.event_processor`) and also runs
inside the gateway; the gateway's settings extend this class for that reason, never the reverse.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import FleetSettings


class EventProcessorSettings(FleetSettings):
    processor_group_id: str = Field(
        "gateway-event-processor",
        validation_alias="EVENT_PROCESSOR_GROUP_ID",
        description="Kafka consumer group; every processor of one fleet shares it",
    )
    processor_batch_size: int = Field(
        5_000,
        ge=1,
        le=100_000,
        validation_alias="EVENT_PROCESSOR_BATCH_SIZE",
        description="records per poll and per insert",
    )
    processor_flush_interval_ms: int = Field(
        50,
        ge=1,
        le=10_000,
        validation_alias="EVENT_PROCESSOR_FLUSH_INTERVAL_MS",
        description="longest a partial batch waits before it is stored",
    )
    processor_stores_in_flight: int = Field(
        2,
        ge=1,
        le=8,
        validation_alias="EVENT_PROCESSOR_STORES_IN_FLIGHT",
        description="batches stored at once, each on its own connection; offsets still committed in order",
    )
    processor_fetch_max_wait_ms: int = Field(
        50,
        ge=0,
        le=10_000,
        validation_alias="EVENT_PROCESSOR_FETCH_MAX_WAIT_MS",
        description="longest the broker may hold a fetch for data; bounds the idle-to-first-event latency",
    )
    processor_lag_refresh_s: float = Field(
        2.0,
        gt=0,
        le=300,
        validation_alias="EVENT_PROCESSOR_LAG_REFRESH_S",
        description="how often the consumer lag gauges are recomputed",
    )
    processor_retry_backoff_max_s: float = Field(
        10.0,
        gt=0,
        validation_alias="EVENT_PROCESSOR_RETRY_BACKOFF_MAX",
        description="longest wait between two tries to store a batch while the database fails",
    )
    processor_shutdown_timeout_s: float = Field(
        15.0,
        gt=0,
        validation_alias="EVENT_PROCESSOR_SHUTDOWN_TIMEOUT",
        description="time the batch in hand gets to be stored and committed on stop",
    )
    kafka_session_timeout_ms: int = Field(10_000, ge=1000, validation_alias="KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = Field(1_000, ge=100, validation_alias="KAFKA_HEARTBEAT_INTERVAL_MS")


@lru_cache(maxsize=1)
def get_settings() -> EventProcessorSettings:
    return EventProcessorSettings()
