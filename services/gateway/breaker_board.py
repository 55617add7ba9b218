"""The fleet's breaker board: the gateway's breakers in use plus those of every service behind it.

Each upstream service serves its own breakers at `GET /breakers`; the board asks all of them
at once, each under a short timeout, so one hung service costs the board at most that timeout
and is reported as `{"unreachable": true}` rather than left out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from pydantic import TypeAdapter, ValidationError

from services.gateway.http_client import UpstreamStatusError, get_json
from services.gateway.settings import GatewaySettings
from shared.breaker import BreakerRegistry, BreakerSnapshot


def upstream_services(settings: GatewaySettings) -> dict[str, str]:
    """Service name → base URL of the services whose breakers the board shows."""
    services = {
        "analytics": settings.analytics_url,
        "optimizer": settings.optimizer_url,
        "replicator": settings.replicator_url,
    }
    if not settings.run_event_processor:  # the processor runs on its own: its breakers are there
        services["event_processor"] = settings.event_processor_url
    return services


_SNAPSHOTS = TypeAdapter(dict[str, BreakerSnapshot])


async def _fetch(client: aiohttp.ClientSession, url: str, timeout_s: float) -> dict[str, Any]:
    """The service's breakers, each checked against the board's shape: an answer that is not
    one (a wrong or hostile upstream) is reported like a silent service, never passed on."""
    try:
        body = await get_json(client, url.rstrip("/") + "/breakers", timeout_s)
    except TimeoutError:
        return {"unreachable": True, "reason": f"no answer within {timeout_s:g} s"}
    except UpstreamStatusError as exc:
        return {"unreachable": True, "reason": f"answered {exc}"}
    except (aiohttp.ClientError, OSError) as exc:
        return {"unreachable": True, "reason": f"connection failed ({type(exc).__name__})"}
    except ValueError:
        return {"unreachable": True, "reason": "the answer is not JSON"}
    try:
        return {name: s.model_dump() for name, s in _SNAPSHOTS.validate_python(body).items()}
    except ValidationError:
        return {"unreachable": True, "reason": "the answer is not a list of breakers"}


async def breaker_board(
    registry: BreakerRegistry, client: aiohttp.ClientSession, services: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    names = list(services)
    answers = await asyncio.gather(*(_fetch(client, services[n], timeout_s) for n in names))
    board: dict[str, Any] = registry.in_use()
    board["services"] = dict(zip(names, answers, strict=True))
    return board
