"""Gateway settings: the fleet's, plus ingestion and processor knobs."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import FleetSettings


class GatewaySettings(FleetSettings):
    run_event_processor: bool = Field(True, validation_alias="GATEWAY_RUN_EVENT_PROCESSOR")
    max_events_per_request: int = Field(10_000, ge=1, validation_alias="MAX_EVENTS_PER_REQUEST")
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024, validation_alias="MAX_REQUEST_BYTES")
    proxy_timeout_s: float = Field(10.0, gt=0, validation_alias="PROXY_TIMEOUT")

    processor_group_id: str = Field("gateway-event-processor", validation_alias="EVENT_PROCESSOR_GROUP_ID")
    processor_batch_size: int = Field(5_000, ge=1, le=100_000, validation_alias="EVENT_PROCESSOR_BATCH_SIZE")
    processor_flush_interval_ms: int = Field(
        50, ge=1, le=10_000, validation_alias="EVENT_PROCESSOR_FLUSH_INTERVAL_MS"
    )
    processor_max_message_bytes: int = Field(64 * 1024, ge=256, validation_alias="EVENT_PROCESSOR_MAX_MESSAGE_BYTES")
    kafka_session_timeout_ms: int = Field(10_000, ge=1000, validation_alias="KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = Field(1_000, ge=100, validation_alias="KAFKA_HEARTBEAT_INTERVAL_MS")


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()
