"""Gateway settings: the fleet's, plus proxy, ingestion and processor knobs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import CONFIG_DIR, FleetSettings


class GatewaySettings(FleetSettings):
    run_event_processor: bool = Field(True, validation_alias="GATEWAY_RUN_EVENT_PROCESSOR")

    # Ingestion (POST /api/v1/events).
    max_events_per_request: int = Field(10_000, ge=1, validation_alias="MAX_EVENTS_PER_REQUEST")
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024, validation_alias="MAX_REQUEST_BYTES")
    ingest_rate_limit: str | None = Field(
        None,
        validation_alias="INGEST_RATE_LIMIT",
        description="requests per API key (or client address), e.g. '100/second;2000/minute'; unset = none",
    )
    ingest_events_rate_limit: str | None = Field(
        None,
        validation_alias="INGEST_EVENTS_RATE_LIMIT",
        description="events per API key (or client address), e.g. '50000/minute'; unset = none",
    )
    rate_limit_storage_uri: str = Field(
        "memory://",
        validation_alias="RATE_LIMIT_STORAGE_URI",
        description="a `limits` storage: memory:// (per process) or async+redis://host:port to share",
    )

    # Proxy.
    routes_config: Path = Field(CONFIG_DIR / "routes.yaml", validation_alias="GATEWAY_ROUTES_CONFIG")
    proxy_timeout_s: float = Field(10.0, gt=0, validation_alias="PROXY_TIMEOUT")
    proxy_http_transport: Literal["aiohttp", "httpcore"] = Field(
        "aiohttp",
        validation_alias="PROXY_HTTP_TRANSPORT",
        description="connection pool under the shared httpx client",
    )
    proxy_max_connections: int = Field(200, ge=1, validation_alias="PROXY_MAX_CONNECTIONS")
    proxy_max_keepalive: int = Field(100, ge=0, validation_alias="PROXY_MAX_KEEPALIVE")
    proxy_stale_entries: int = Field(1024, ge=0, validation_alias="PROXY_STALE_ENTRIES")
    proxy_stale_max_bytes: int = Field(64 * 1024 * 1024, ge=0, validation_alias="PROXY_STALE_MAX_BYTES")

    # Event processor.
    processor_group_id: str = Field("gateway-event-processor", validation_alias="EVENT_PROCESSOR_GROUP_ID")
    processor_batch_size: int = Field(5_000, ge=1, le=100_000, validation_alias="EVENT_PROCESSOR_BATCH_SIZE")
    processor_flush_interval_ms: int = Field(
        50, ge=1, le=10_000, validation_alias="EVENT_PROCESSOR_FLUSH_INTERVAL_MS"
    )
    processor_fetch_max_wait_ms: int = Field(
        50,
        ge=0,
        le=10_000,
        validation_alias="EVENT_PROCESSOR_FETCH_MAX_WAIT_MS",
        description="longest the broker may hold a fetch for data; bounds the idle-to-first-event latency",
    )
    processor_max_message_bytes: int = Field(
        64 * 1024, ge=256, validation_alias="EVENT_PROCESSOR_MAX_MESSAGE_BYTES"
    )
    processor_retry_backoff_max_s: float = Field(
        10.0, gt=0, validation_alias="EVENT_PROCESSOR_RETRY_BACKOFF_MAX"
    )
    processor_shutdown_timeout_s: float = Field(
        15.0, gt=0, validation_alias="EVENT_PROCESSOR_SHUTDOWN_TIMEOUT"
    )
    kafka_session_timeout_ms: int = Field(10_000, ge=1000, validation_alias="KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = Field(1_000, ge=100, validation_alias="KAFKA_HEARTBEAT_INTERVAL_MS")


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()
