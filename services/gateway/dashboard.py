"""The live performance page: `GET /dashboard/performance`, its data and its static files.

The page is plain HTML + JavaScript (no framework) and polls `/dashboard/performance/data`,
which gathers the fleet's figures in one request. It reports its own Core Web Vitals and frame
times to the analytics service through the gateway's `/api/v1/performance` proxy route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from services.gateway.dashboard_data import DashboardSources, DashboardState
from shared.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# Only the files shipped with the page are served: no directory listing, no path walking.
_STATIC_FILES = (
    {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in _MEDIA_TYPES} if STATIC_DIR.is_dir() else {}
)

router = APIRouter(tags=["dashboard"], include_in_schema=True)


def _state(request: Request) -> DashboardState:
    state: DashboardState | None = getattr(request.app.state, "dashboard_state", None)
    if state is None:
        state = request.app.state.dashboard_state = DashboardState()
    return state


@router.get("/dashboard/performance", include_in_schema=False)
async def performance_page() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "performance.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


class DashboardSection(BaseModel):
    """One source of the page: its data, or why it could not be read."""

    ok: bool
    data: Any = None
    error: str | None = None
    fetched_ms: float | None = None


class DashboardData(BaseModel):
    breakers: DashboardSection
    events: DashboardSection
    cache: DashboardSection
    replication: DashboardSection
    optimizer: DashboardSection
    alerts: DashboardSection
    operations: DashboardSection = Field(description="the fleet's slowest timed operations (p95)")
    requests: DashboardSection
    generated_at: float


@router.get("/dashboard/performance/data", response_model=DashboardData)
async def performance_data(request: Request) -> dict[str, Any]:
    """Breakers, event throughput and latency, request latency per service, cache hit ratios,
    replication, optimizer settings, recent alerts and the fleet's slowest operations; a section
    whose source is down carries `ok: false` and the reason."""
    app = request.app
    http: aiohttp.ClientSession | None = getattr(app.state, "http", None)
    if http is None:
        raise ApiError(503, "the gateway is starting", headers={"Retry-After": "1"})
    settings = app.state.settings
    sources = DashboardSources(
        settings,
        http,
        breakers=app.state.breakers.in_use,
        http_registry=getattr(app.state, "http_metrics_registry", None),
        processor_in_process=getattr(app.state, "processor", None) is not None,
        state=_state(request),
    )
    return await sources.collect()


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    path = _STATIC_FILES.get(name)
    if path is None:
        raise ApiError(404, f"no static file {name!r}")
    # FileResponse sends ETag and Last-Modified; revalidation keeps a rebuilt bundle from going stale.
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
