"""The event processor as its own service (to scale out): `python -m services.gateway.event_processor`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from services.gateway import __version__, breaker_routes
from services.gateway.event_processor import tuning as processor_tuning
from services.gateway.event_processor.service import ProcessorService
from services.gateway.settings import GatewaySettings, get_settings
from shared.breaker import get_breaker_registry
from shared.db import create_pool, ping
from shared.resources import start_resource_guard
from shared.service_app import create_service_app, readiness_checks


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    breakers = get_breaker_registry(settings.circuit_breaker_config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        guard = start_resource_guard(settings, service="event_processor")
        pool = await create_pool(
            settings.require_database_url(),
            min_size=0,
            max_size=4,
            command_timeout=settings.database_timeout_s,
        )
        processor = ProcessorService(settings, pool, breakers.get("database"))
        app.state.processor = processor
        checks = readiness_checks(app)
        checks["database"] = lambda: ping(pool)
        checks["kafka"] = processor.check_ready
        processor.start()
        try:
            yield
        finally:
            await processor.stop()
            await pool.close()
            await guard.stop()

    app = create_service_app(
        service="event_processor", version=__version__, settings=settings, lifespan=lifespan
    )

    app.state.breakers = breakers
    app.include_router(breaker_routes.router)
    app.include_router(processor_tuning.router)

    @app.get("/status", tags=["processor"])
    async def status(request: Request) -> dict[str, Any]:
        processor: ProcessorService = request.app.state.processor
        return processor.status()

    return app
