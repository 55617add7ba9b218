"""The documented shape of one breaker's snapshot (`CircuitBreaker.snapshot()`), for response models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.breaker.errors import State


class HalfOpenCalls(BaseModel):
    permitted: int
    admitted: int
    completed: int
    failed: int


class BreakerSnapshot(BaseModel):
    model_config = ConfigDict(extra="allow")

    state: State
    open: int = Field(description="transitions into open since start")
    half_open: int = Field(description="transitions into half_open since start")
    closed: int = Field(description="transitions into closed since start")
    failure_rate: float | None = Field(description="percent; null until the window holds enough calls")
    slow_call_rate: float | None
    calls_in_window: int
    failed_calls_in_window: int
    slow_calls_in_window: int
    consecutive_failures: int
    opened_at: str | None = Field(description="ISO 8601 start of the current outage")
    state_since_seconds: float
    retry_after: float
    calls: dict[str, int] = Field(description="calls by outcome: success, failure, slow, rejected, ignored")
    config: dict[str, Any] = Field(description="the effective configuration of this breaker")
    half_open_calls: HalfOpenCalls | None = None


class Unreachable(BaseModel):
    unreachable: Literal[True]
    reason: str | None = Field(None, description="no answer in time, an error status, an unreadable answer")


class BreakerBoard(BaseModel):
    """The gateway's `GET /breaker`: its own breakers by name, and under `services` those of each
    service behind it, or `{"unreachable": true}` when that service did not answer."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, BreakerSnapshot] = Field(init=False)

    services: dict[str, Unreachable | dict[str, BreakerSnapshot]] = Field(
        default_factory=dict, description="per service behind the gateway"
    )
