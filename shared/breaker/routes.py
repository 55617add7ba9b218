"""`GET /breakers`: the breakers a service calls through, for the gateway's fleet-wide board.

Each service mounts this router; the gateway's `GET /breaker` fetches it from every service
behind it. Same shape as the gateway's own entries: `{"<name>": {"state", "open",
"half_open", "closed", ...}}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from shared.breaker.circuit import get_breaker_registry
from shared.breaker.snapshot import BreakerSnapshot

router = APIRouter(tags=["breakers"])


@router.get("/breakers", response_model=dict[str, BreakerSnapshot])
async def breakers_in_use(request: Request) -> dict[str, dict[str, Any]]:
    """Every breaker this service has called through since start, with state and transition counts."""
    return get_breaker_registry(request.app.state.settings.circuit_breaker_config).in_use()
