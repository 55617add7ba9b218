"""Replicator app: metrics and status on REPLICATION_METRICS_PORT."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from services.replicator import __version__
from services.replicator.settings import ReplicatorSettings, get_settings
from shared.db import create_pool, ping
from shared.service_app import create_service_app, readiness_checks


def create_app(settings: ReplicatorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        source = await create_pool(settings.require_database_url(), min_size=1, max_size=2)
        target = await create_pool(settings.require_timescale_url(), min_size=1, max_size=2)
        app.state.source, app.state.target = source, target
        checks = readiness_checks(app)
        checks["source"] = lambda: ping(source)
        checks["target"] = lambda: ping(target)
        try:
            yield
        finally:
            await target.close()
            await source.close()

    app = create_service_app(service="replicator", version=__version__, settings=settings, lifespan=lifespan)

    @app.get("/status", tags=["replication"])
    async def status(request: Request) -> dict[str, Any]:
        row = await request.app.state.target.fetchrow(
            "SELECT last_seq, rows_total, updated_at FROM replication_state WHERE stream = 'access_events'"
        )
        return {
            "watermark": int(row["last_seq"]) if row else 0,
            "rows_replicated": int(row["rows_total"]) if row else 0,
            "updated_at": row["updated_at"].isoformat() if row else None,
        }

    return app
