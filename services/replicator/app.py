"""Replicator app: the replication loop in the background, metrics and status on REPLICATION_METRICS_PORT."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.replicator import __version__
from services.replicator.deps import Replicator
from services.replicator.service import ReplicatorService, ReplicatorStatus
from services.replicator.settings import ReplicatorSettings, get_settings
from services.replicator.tuning import router as tuning_router
from shared.service_app import create_service_app, include_routes, readiness_checks


def create_app(settings: ReplicatorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = ReplicatorService(settings, guard=app.state.resource_guard)
        await service.open()
        app.state.replicator = service
        checks = readiness_checks(app)
        checks["source"] = service.check_source
        checks["target"] = service.check_target
        service.start()
        try:
            yield
        finally:
            await service.close()

    app = create_service_app(
        service="replicator",
        version=__version__,
        settings=settings,
        lifespan=lifespan,
        description="Copies access events from the primary to the replica in commit order.",
    )

    include_routes(app, tuning_router)

    @app.get("/status", tags=["status"], response_model=ReplicatorStatus)
    async def status(service: Replicator) -> ReplicatorStatus:
        """Watermark (commit-order position), rows replicated, backlog and lag, last batch, errors."""
        return service.status()

    return app
