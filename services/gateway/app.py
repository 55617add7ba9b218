"""Gateway app: event ingestion, the proxy, circuit breakers and the embedded event processor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from services.gateway import __version__, breaker_routes, dashboard, ingest, proxy
from services.gateway.admission import MemoryBudget
from services.gateway.event_processor import tuning as processor_tuning
from services.gateway.event_processor.service import running_processor
from services.gateway.http_client import create_upstream_session
from services.gateway.publisher import EventPublisher
from services.gateway.rate_limit import IngestLimiter
from services.gateway.routes_table import load_routes
from services.gateway.settings import GatewaySettings, get_settings
from services.gateway.stale_cache import StaleCache
from shared.breaker import get_breaker_registry
from shared.redis_options import redis_connection_options
from shared.service_app import create_service_app, include_routes, readiness_checks


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Read both files now, so a wrong value stops start-up with a message naming file and key.
    breakers = get_breaker_registry(settings.circuit_breaker_config)
    routes = load_routes(settings.routes_config, settings)
    limiter = IngestLimiter(
        settings.ingest_rate_limit,
        settings.ingest_events_rate_limit,
        settings.rate_limit_storage_uri,
        redis_options=lambda tls: redis_connection_options(settings, tls=tls),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        checks = readiness_checks(app)
        publisher = EventPublisher(
            settings.require_kafka(),
            settings.access_events_topic,
            settings.access_events_partitions,
            timeout_s=settings.kafka_request_timeout_ms / 1000,
        )
        app.state.publisher = publisher
        checks["kafka"] = publisher.check_ready
        http = create_upstream_session(settings)
        app.state.http = http
        app.state.proxy = proxy.Proxy(
            http,
            breakers,
            StaleCache(
                max_entries=settings.proxy_stale_entries, max_total_bytes=settings.proxy_stale_max_bytes
            ),
        )
        processor: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if settings.run_event_processor:
            processor = running_processor(
                settings, breakers.get("database"), checks, consumer_check="event_processor"
            )
        try:
            async with processor as running:
                app.state.processor = running
                yield
        finally:
            await http.close()
            await publisher.close()
            await limiter.aclose()

    app = create_service_app(
        service="gateway",
        version=__version__,
        settings=settings,
        lifespan=lifespan,
        description="Front door of the fleet: event ingestion, proxy and circuit breakers.",
    )
    if settings.trusted_proxy_list:
        # uvicorn's own handling, scoped to the proxies named: `request.client` becomes the
        # rightmost X-Forwarded-For address that is not one of them.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)
    app.state.breakers = breakers
    for route in routes:  # the proxy's breakers are in use from the start, not from a first call
        breakers.get(route.route.breaker)
    app.state.kafka_breaker = breakers.get("kafka")
    app.state.ingest_limiter = limiter
    app.state.ingest_budget = MemoryBudget(settings.ingest_budget_bytes_per_worker)
    app.state.routes = routes
    include_routes(app, ingest.router)
    include_routes(app, breaker_routes.router)
    include_routes(app, dashboard.router)
    include_routes(app, proxy.build_router(routes))
    # Innermost (inside tracing, timing, metrics, the error envelope and the request id): the
    # fast paths of the ingest route and of the proxy, which answer what the declared routes
    # above would, without the router's per-request work. Ingestion first: it is recognised by
    # one comparison, so proxied requests lose nothing to it.
    app.user_middleware.append(Middleware(ingest.IngestDispatch))
    app.user_middleware.append(Middleware(proxy.ProxyDispatch, routes=routes))
    if settings.run_event_processor:  # its tuning is served (and documented) where it runs
        include_routes(app, processor_tuning.router)
    return app
