"""The optimizer's status: what it tunes, what it read, what it decided and why."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.admin import Bounds

Number = int | float


class KnobState(BaseModel):
    value: Number = Field(description="the live value, as last read or set")
    default: Number = Field(description="the service's configured value")
    bounds: Bounds
    recommended: Number | None = Field(description="a change proposed while OPTIMIZER_ENABLED=false")
    last_change: float | None = Field(description="Unix time of the last change")


class TunedService(BaseModel):
    url: str
    source: str | None = Field(description="where the settings came from (GET /admin/tuning or assumed)")
    settings: dict[str, KnobState]


class SignalsRead(BaseModel):
    services: dict[str, dict[str, float | None]] = Field(description="signals per service")
    host: dict[str, float | None]
    errors: dict[str, str] = Field(description="why a source could not be read")


class DecisionView(BaseModel):
    at: float
    service: str
    setting: str
    old: Number
    new: Number
    rule: str
    reason: str
    signals: dict[str, float | None] = Field(description="the signals the rule saw")
    applied: bool
    error: str | None


class OptimizerStatus(BaseModel):
    """`GET /status` (also at `GET /api/v1/optimizer/status`, the path the gateway proxies)."""

    enabled: bool
    mode: str = Field(description="apply (OPTIMIZER_ENABLED=true) or recommend")
    signal_source: str = Field(description="prometheus or scrape")
    interval_seconds: float
    cooldown_seconds: float
    confirmations: int
    latency_target_ms: float
    cycles: int
    last_cycle_at: float | None
    services: dict[str, TunedService]
    signals: SignalsRead
    decisions: list[DecisionView] = Field(description="the last decisions, newest first")
