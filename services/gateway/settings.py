"""Gateway settings: the event processor's (the gateway hosts it), plus proxy and ingestion knobs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from services.gateway.event_processor.settings import EventProcessorSettings
from shared.settings import CONFIG_DIR


class GatewaySettings(EventProcessorSettings):
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


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()
