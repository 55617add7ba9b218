"""Gateway app: event ingestion, the proxy to the other services, and the embedded event processor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from services.gateway import __version__, ingest, proxy
from services.gateway.event_processor.service import ProcessorService
from services.gateway.publisher import EventPublisher
from services.gateway.settings import GatewaySettings, get_settings
from shared.db import create_pool, ping
from shared.service_app import create_service_app, readiness_checks


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        checks = readiness_checks(app)
        publisher = EventPublisher(
            settings.require_kafka(), settings.access_events_topic, settings.access_events_partitions,
            timeout_s=settings.kafka_request_timeout_ms / 1000,
        )
        app.state.publisher = publisher
        checks["kafka"] = publisher.check_ready
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.proxy_timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        app.state.http = http
        pool = None
        processor = None
        if settings.run_event_processor:
            pool = await create_pool(settings.require_database_url(), min_size=1, max_size=4,
                                     command_timeout=settings.database_timeout_s)
            processor = ProcessorService(settings, pool)
            app.state.processor = processor
            checks["database"] = lambda: ping(pool)
            checks["event_processor"] = processor.check_ready
            processor.start()
        try:
            yield
        finally:
            if processor is not None:
                await processor.stop()
            if pool is not None:
                await pool.close()
            await http.aclose()
            await publisher.close()

    app = create_service_app(service="gateway", version=__version__, settings=settings, lifespan=lifespan,
                             description="Front door of the fleet: event ingestion and proxy.")
    app.include_router(ingest.router)
    app.include_router(proxy.router)
    return app
