"""Optimizer app."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.optimizer import __version__
from services.optimizer.settings import OptimizerSettings, get_settings
from shared.service_app import create_service_app


def create_app(settings: OptimizerSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_service_app(service="optimizer", version=__version__, settings=settings)

    @app.get("/api/v1/optimizer/status", tags=["optimizer"])
    async def status() -> dict[str, Any]:
        return {"enabled": settings.optimizer_enabled, "services": {}, "signals": {}, "decisions": []}

    return app
