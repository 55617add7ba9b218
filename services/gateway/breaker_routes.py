"""`GET /breaker`: every circuit breaker of the gateway, with its state, rates and config."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from shared.admin import AdminOnly
from shared.breaker import BreakerRegistry
from shared.errors import ApiError

router = APIRouter(tags=["breakers"])


def _registry(request: Request) -> BreakerRegistry:
    registry: BreakerRegistry = request.app.state.breakers
    return registry


@router.get("/breaker")
async def list_breakers(request: Request) -> dict[str, dict[str, Any]]:
    """Per breaker: state, transitions into each state since start (`open`, `half_open`, `closed`),
    failure and slow-call rates (null until the window holds the minimum number of calls), calls
    in the window, `opened_at` of the current outage, calls by outcome and the effective config."""
    return _registry(request).snapshot()


@router.get("/breaker/{name}")
async def get_breaker(name: str, request: Request) -> dict[str, Any]:
    registry = _registry(request)
    if name not in registry:
        raise ApiError(
            404, f"no circuit breaker named {name!r}", details={"known": sorted(registry.snapshot())}
        )
    return registry.get(name).snapshot()


@router.post("/breaker/{name}/reset")
async def reset_breaker(name: str, request: Request, _: AdminOnly) -> dict[str, Any]:
    """Close a breaker by hand (bearer `ADMIN_TOKEN`), e.g. after fixing the dependency."""
    registry = _registry(request)
    if name not in registry:
        raise ApiError(404, f"no circuit breaker named {name!r}")
    breaker = registry.get(name)
    breaker.reset()
    return breaker.snapshot()
