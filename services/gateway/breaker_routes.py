"""`GET /breaker`: every circuit breaker of the gateway, with its state, rates and config."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.gateway.deps import Breakers
from shared.admin import AdminOnly
from shared.breaker import BreakerSnapshot
from shared.errors import ApiError

router = APIRouter(tags=["breakers"])


@router.get("/breaker", response_model=dict[str, BreakerSnapshot])
async def list_breakers(registry: Breakers) -> dict[str, dict[str, Any]]:
    """Per breaker: state, transitions into each state since start (`open`, `half_open`, `closed`),
    failure and slow-call rates (null until the window holds the minimum number of calls), calls
    in the window, `opened_at` of the current outage, calls by outcome and the effective config."""
    return registry.snapshot()


@router.get("/breaker/{name}", response_model=BreakerSnapshot)
async def get_breaker(name: str, registry: Breakers) -> dict[str, Any]:
    if name not in registry:
        raise ApiError(
            404, f"no circuit breaker named {name!r}", details={"known": sorted(registry.snapshot())}
        )
    return registry.get(name).snapshot()


@router.post("/breaker/{name}/reset", response_model=BreakerSnapshot)
async def reset_breaker(name: str, registry: Breakers, _: AdminOnly) -> dict[str, Any]:
    """Close a breaker by hand (bearer `ADMIN_TOKEN`), e.g. after fixing the dependency."""
    if name not in registry:
        raise ApiError(404, f"no circuit breaker named {name!r}")
    breaker = registry.get(name)
    breaker.reset()
    return breaker.snapshot()
