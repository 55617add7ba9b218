"""Typed request dependencies of the gateway's routes: what `create_app` and its lifespan built."""

from __future__ import annotations

# Every dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hand-off per dependency per request for what is an attribute read.
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from services.gateway.admission import MemoryBudget
from services.gateway.publisher import EventPublisher
from services.gateway.rate_limit import IngestLimiter
from services.gateway.settings import GatewaySettings
from shared.breaker import BreakerRegistry, CircuitBreaker

if TYPE_CHECKING:  # the proxy module builds its routes with ProxyDep: a runtime import would loop
    from services.gateway.proxy import Proxy


async def get_proxy(request: Request) -> Proxy:
    proxy: Proxy = request.app.state.proxy
    return proxy


async def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


async def get_gateway_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_breakers(request: Request) -> BreakerRegistry:
    registry: BreakerRegistry = request.app.state.breakers
    return registry


async def get_kafka_breaker(request: Request) -> CircuitBreaker:
    breaker: CircuitBreaker = request.app.state.kafka_breaker
    return breaker


async def get_ingest_budget(request: Request) -> MemoryBudget:
    budget: MemoryBudget = request.app.state.ingest_budget
    return budget


async def get_ingest_limiter(request: Request) -> IngestLimiter:
    limiter: IngestLimiter = request.app.state.ingest_limiter
    return limiter


Publisher = Annotated[EventPublisher, Depends(get_publisher)]
Settings = Annotated[GatewaySettings, Depends(get_gateway_settings)]
Breakers = Annotated[BreakerRegistry, Depends(get_breakers)]
Limiter = Annotated[IngestLimiter, Depends(get_ingest_limiter)]
KafkaBreaker = Annotated[CircuitBreaker, Depends(get_kafka_breaker)]
IngestBudget = Annotated[MemoryBudget, Depends(get_ingest_budget)]
ProxyDep = Annotated["Proxy", Depends(get_proxy)]
