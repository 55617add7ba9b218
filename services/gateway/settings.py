"""Gateway settings: the event processor's (the gateway hosts it), plus proxy and ingestion knobs."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from services.gateway.admission import request_cost
from services.gateway.event_processor.settings import EventProcessorSettings
from shared.settings import CONFIG_DIR


class GatewaySettings(EventProcessorSettings):
    run_event_processor: bool = Field(True, validation_alias="GATEWAY_RUN_EVENT_PROCESSOR")
    workers: int = Field(
        1,
        ge=1,
        le=32,
        validation_alias="GATEWAY_WORKERS",
        description="gateway processes sharing GATEWAY_PORT (uvicorn workers); more than 1 needs "
        "GATEWAY_RUN_EVENT_PROCESSOR=false and, with rate limits, a shared RATE_LIMIT_STORAGE_URI",
    )

    # Ingestion (POST /api/v1/events).
    max_events_per_request: int = Field(10_000, ge=1, validation_alias="MAX_EVENTS_PER_REQUEST")
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        validation_alias="MAX_REQUEST_BYTES",
        description="largest body of POST /api/v1/events; it may cost up to 40x this in memory",
    )
    ingest_memory_budget_mb: int = Field(
        256,
        ge=16,
        validation_alias="INGEST_MEMORY_BUDGET_MB",
        description="memory all ingest requests together may hold; requests wait for room (MiB)",
    )
    ingest_admission_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        validation_alias="INGEST_ADMISSION_TIMEOUT",
        description="longest an ingest request waits for memory budget before a 503 (s)",
    )
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
    trusted_proxies: str | None = Field(
        None,
        validation_alias="TRUSTED_PROXIES",
        description="comma list of addresses or CIDRs whose X-Forwarded-For is believed; unset = none",
    )
    rate_limit_storage_uri: str = Field(
        "memory://",
        validation_alias="RATE_LIMIT_STORAGE_URI",
        description="a `limits` storage: memory:// (per process) or async+redis://host:port to share",
    )

    # Proxy.
    routes_config: Path = Field(CONFIG_DIR / "routes.yaml", validation_alias="GATEWAY_ROUTES_CONFIG")
    proxy_timeout_s: float = Field(10.0, gt=0, validation_alias="PROXY_TIMEOUT")
    proxy_max_connections: int = Field(200, ge=1, validation_alias="PROXY_MAX_CONNECTIONS")
    proxy_stale_entries: int = Field(1024, ge=0, validation_alias="PROXY_STALE_ENTRIES")
    proxy_stale_max_bytes: int = Field(64 * 1024 * 1024, ge=0, validation_alias="PROXY_STALE_MAX_BYTES")

    breaker_board_timeout_s: float = Field(
        1.0,
        gt=0,
        le=10,
        validation_alias="BREAKER_BOARD_TIMEOUT_S",
        description="how long GET /breaker waits for each upstream service's breakers",
    )

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _addresses_or_networks(cls, value: str | None) -> str | None:
        for entry in (value or "").split(","):
            if entry.strip():
                try:
                    ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    raise ValueError(
                        f"TRUSTED_PROXIES: {entry.strip()!r} is not an address or CIDR"
                    ) from None
        return value

    @model_validator(mode="after")
    def _one_request_fits_the_budget(self) -> GatewaySettings:
        cost = request_cost(self.max_request_bytes)
        if cost > self.ingest_budget_bytes_per_worker:
            per_worker = f" shared by GATEWAY_WORKERS={self.workers}" if self.workers > 1 else ""
            raise ValueError(
                f"INGEST_MEMORY_BUDGET_MB={self.ingest_memory_budget_mb}{per_worker} cannot hold one "
                f"request of MAX_REQUEST_BYTES={self.max_request_bytes} (it may cost {cost // 2**20} MiB)"
            )
        return self

    @model_validator(mode="after")
    def _workers_share_what_must_be_shared(self) -> GatewaySettings:
        """Several workers are several processes: whatever must hold across them is refused
        when it would silently hold per process only."""
        if self.workers == 1:
            return self
        if self.run_event_processor:
            raise ValueError(
                f"GATEWAY_WORKERS={self.workers} needs GATEWAY_RUN_EVENT_PROCESSOR=false: run the "
                "event processor as its own process (python -m services.gateway.event_processor)"
            )
        limited = self.ingest_rate_limit or self.ingest_events_rate_limit
        if limited and self.rate_limit_storage_uri.removeprefix("async+").startswith("memory://"):
            raise ValueError(
                f"GATEWAY_WORKERS={self.workers} with ingest rate limits needs a shared "
                "RATE_LIMIT_STORAGE_URI (e.g. redis://host:6379): memory:// counts per worker, "
                f"which would allow {self.workers}x the limit"
            )
        return self

    @property
    def ingest_budget_bytes_per_worker(self) -> int:
        """INGEST_MEMORY_BUDGET_MB is the gateway's whole budget; each worker holds its share."""
        return self.ingest_memory_budget_mb * 1024 * 1024 // self.workers

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [entry.strip() for entry in (self.trusted_proxies or "").split(",") if entry.strip()]


@lru_cache(maxsize=1)
def get_settings() -> GatewaySettings:
    return GatewaySettings()
