"""Optimizer app: the tuning loop in the background, its status and gauges over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from services.optimizer import __version__
from services.optimizer.optimizer import Optimizer
from services.optimizer.settings import OptimizerSettings, get_settings
from shared.service_app import create_service_app


def _optimizer(request: Request) -> Optimizer:
    optimizer: Optimizer = request.app.state.optimizer
    return optimizer


OptimizerDep = Annotated[Optimizer, Depends(_optimizer)]


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

    @app.get("/api/v1/optimizer/status", tags=["optimizer"])
    async def status(optimizer: OptimizerDep) -> dict[str, Any]:
        """Current settings per service, the signals read, and the last decisions with their reasons."""
        return optimizer.status()

    return app
