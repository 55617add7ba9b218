"""The breaker's rejection, in its own module so the classifier can recognise it by type."""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreakerOpen(Exception):
    """The breaker rejected the call without running it."""

    def __init__(self, name: str, retry_after: float, state: State = "open") -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        self.state = state
        super().__init__(f"circuit breaker {name!r} is {state}; retry in {self.retry_after:.1f}s")


class CausedByInput(Exception):
    """Base for errors a call raises because of what it was given (a message too large...).

    The dependency answered, so a breaker never counts them as its failures."""
