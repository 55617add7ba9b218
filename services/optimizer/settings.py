"""Optimizer settings: the fleet's (OPTIMIZER_ENABLED, ADMIN_TOKEN, service URLs), plus its own."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import FleetSettings


class OptimizerSettings(FleetSettings):
    optimizer_interval_s: float = Field(10.0, gt=0, validation_alias="OPTIMIZER_INTERVAL")
    # A knob changed once is left alone this long, so the effect of a change is measured
    # before the next one (the controller never chases its own noise).
    optimizer_cooldown_s: float = Field(30.0, ge=0, validation_alias="OPTIMIZER_COOLDOWN")
    # A condition must hold this many evaluations in a row before it moves a knob.
    optimizer_confirmations: int = Field(2, ge=1, validation_alias="OPTIMIZER_CONFIRMATIONS")
    optimizer_latency_target_ms: float = Field(500.0, gt=0, validation_alias="OPTIMIZER_LATENCY_TARGET_MS")
    optimizer_cache_hit_target: float = Field(0.8, gt=0, le=1, validation_alias="OPTIMIZER_CACHE_HIT_TARGET")
    optimizer_cache_ttl_max_s: float = Field(3600.0, ge=1, validation_alias="OPTIMIZER_CACHE_TTL_MAX")
    # Replication is deferred while foreground writes saturate the host, but the oldest
    # unreplicated event never gets older than this (well under the 300 s backlog alert).
    optimizer_replication_backlog_budget_s: float = Field(
        60.0, gt=0, validation_alias="OPTIMIZER_REPLICATION_BACKLOG_BUDGET"
    )
    optimizer_request_timeout_s: float = Field(5.0, gt=0, validation_alias="OPTIMIZER_REQUEST_TIMEOUT")
    # Where the event processor's /metrics and /admin/tuning are: the gateway by default (it
    # runs the processor in-process), or a standalone processor.
    optimizer_processor_url: str | None = Field(None, validation_alias="OPTIMIZER_PROCESSOR_URL")
    prometheus_url: str | None = Field(None, validation_alias="PROMETHEUS_URL")

    @property
    def processor_url(self) -> str:
        return self.optimizer_processor_url or self.gateway_url


@lru_cache(maxsize=1)
def get_settings() -> OptimizerSettings:
    return OptimizerSettings()
