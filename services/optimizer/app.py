"""Optimizer app: the tuning loop in the background, its status and gauges over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.optimizer import __version__
from services.optimizer.deps import OptimizerDep
from services.optimizer.optimizer import Optimizer
from services.optimizer.settings import OptimizerSettings, get_settings
from services.optimizer.status import OptimizerStatus
from shared.service_app import create_service_app


def create_app(settings: OptimizerSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        optimizer = Optimizer(settings).start()
        app.state.optimizer = optimizer
        try:
            yield
        finally:
            await optimizer.stop()

    app = create_service_app(
        service="optimizer",
        version=__version__,
        settings=settings,
        lifespan=lifespan,
        description="Reads the fleet's metrics and host resources; tunes analytics and the event processor.",
    )

    @app.get("/status", tags=["status"], response_model=OptimizerStatus)
    async def status(optimizer: OptimizerDep) -> OptimizerStatus:
        """Current settings per service, the signals read, and the last decisions with their reasons."""
        return optimizer.status()

    # The same answer under the optimizer's API prefix: the path the gateway proxies
    # (`/api/v1/optimizer/...`), and the one dashboards and operators already use.
    app.add_api_route(
        "/api/v1/optimizer/status",
        status,
        methods=["GET"],
        tags=["status"],
        response_model=OptimizerStatus,
        operation_id="optimizer_status_alias",
        summary="Status (alias of GET /status)",
    )

    return app
