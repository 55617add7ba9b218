"""Analytics app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.analytics import __version__, performance_routes, routes
from services.analytics.analyses import AnalyticsService
from services.analytics.settings import AnalyticsSettings, get_settings
from services.analytics.worker_pool import WorkerPool
from shared.db import create_pool, ping
from shared.service_app import create_service_app, readiness_checks


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(
            settings.require_database_url(),
            min_size=1,
            max_size=10,
            command_timeout=settings.database_timeout_s,
        )
        app.state.pool = pool
        readiness_checks(app)["database"] = lambda: ping(pool)
        workers = WorkerPool(settings.analytics_max_workers)
        await workers.start()
        app.state.workers = workers
        app.state.analytics = AnalyticsService(pool, workers)
        try:
            yield
        finally:
            workers.close()
            await pool.close()

    app = create_service_app(
        service="analytics",
        version=__version__,
        settings=settings,
        lifespan=lifespan,
        description="Access analytics, uploads and performance intake.",
    )
    app.include_router(routes.router)
    app.include_router(performance_routes.router)  # its lifespan runs the snapshots and alerts
    return app
