"""Typed request dependencies of the gateway's routes: what `create_app` and its lifespan built.

Ingestion reads its parts from `app.state` itself (`services.gateway.ingest.accept_events`):
its hot path answers without FastAPI's dependency solving.
"""

from __future__ import annotations

# Every dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hand-off per dependency per request for what is an attribute read.
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from shared.breaker import BreakerRegistry

if TYPE_CHECKING:  # the proxy module builds its routes with ProxyDep: a runtime import would loop
    from services.gateway.proxy import Proxy


async def get_proxy(request: Request) -> Proxy:
    proxy: Proxy = request.app.state.proxy
    return proxy


async def get_breakers(request: Request) -> BreakerRegistry:
    registry: BreakerRegistry = request.app.state.breakers
    return registry


Breakers = Annotated[BreakerRegistry, Depends(get_breakers)]
ProxyDep = Annotated["Proxy", Depends(get_proxy)]
