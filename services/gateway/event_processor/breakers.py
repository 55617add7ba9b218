"""The circuit breakers the event processor uses, and `GET /breaker` listing them.

The processor guards one dependency, the database it stores into. Its breaker comes from the
fleet's breaker file (`CIRCUIT_BREAKER_CONFIG`) under the name `database`; inside the gateway
the same process-wide registry hands the gateway and the processor the same breaker object.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shared.breaker import BreakerRegistry, BreakerSnapshot, CircuitBreaker

DATABASE = "database"


def processor_breakers(registry: BreakerRegistry) -> dict[str, CircuitBreaker]:
    """The processor's breakers by name."""
    return {DATABASE: registry.get(DATABASE)}


def breaker_router(breakers: dict[str, CircuitBreaker]) -> APIRouter:
    router = APIRouter(tags=["breakers"])

    @router.get("/breaker", response_model=dict[str, BreakerSnapshot])
    async def list_breakers() -> dict[str, dict[str, Any]]:
        """Per breaker of the processor: state, transitions into each state since start, rates,
        calls in the window and the effective config (the same shape as the gateway's)."""
        return {name: breaker.snapshot() for name, breaker in breakers.items()}

    return router
