"""`GET /breaker`: the fleet's breaker board (the gateway's own breakers in use and, under
`services`, those of each service behind it); `/breaker/{name}` and its reset act on the
gateway's own."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.gateway.breaker_board import breaker_board, upstream_services
from services.gateway.deps import Breakers, get_breakers
from services.gateway.settings import GatewaySettings
from shared.admin import AdminOnly
from shared.breaker import BreakerBoard, BreakerSnapshot
from shared.errors import ApiError

router = APIRouter(tags=["breakers"])


async def board(request: Request) -> dict[str, Any]:
    """What `GET /breaker` answers (the live page shows the same)."""
    settings: GatewaySettings = request.app.state.settings
    return await breaker_board(
        await get_breakers(request),
        request.app.state.http,
        upstream_services(settings),
        settings.breaker_board_timeout_s,
    )


@router.get("/breaker", response_model=BreakerBoard)
async def list_breakers(request: Request) -> dict[str, Any]:
    """Per breaker the gateway calls through: state, transitions into each state since start
    (`open`, `half_open`, `closed`), failure and slow-call rates (null until the window holds the
    minimum number of calls), calls in the window, `opened_at` of the current outage, calls by
    outcome and the effective config. Under `services`: each upstream service's breakers in the
    same shape, or `{"unreachable": true}` when it does not answer within the board's timeout."""
    return await board(request)


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
