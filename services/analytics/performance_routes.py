"""Performance intake and read-out: the monitor summary, browser vitals and UI batches, history export.

Every service runs the snapshots and the threshold evaluation (`shared.performance.service`,
entered by the app factory); this router reads and feeds the tracker of the analytics process.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from services.analytics.deps import Tracker
from services.analytics.responses import (
    AlertsView,
    PerformanceHistory,
    PerformanceSummary,
    UiAccepted,
    UiMetrics,
    VitalRating,
    VitalsAccepted,
    VitalSummary,
)
from shared.errors import ApiError, validation_details
from shared.performance import export_history_csv, export_history_json, get_performance_monitor
from shared.request_body import read_body_limited

MAX_BODY_BYTES = 256 * 1024
MAX_ITEMS = 1000


class VitalReport(BaseModel):
    """One report of the `web-vitals` library; its other fields (id, delta, navigationType) are kept out."""

    model_config = ConfigDict(extra="ignore")

    name: Literal["LCP", "CLS", "INP", "FCP", "TTFB"]
    # Times are in milliseconds (CLS is a small unitless score): an hour bounds every real one.
    value: float = Field(ge=0, le=3_600_000, strict=True)
    page: str = Field("", max_length=512)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class FrameReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame_time_ms: float = Field(ge=0, le=60_000, strict=True)


class CallbackReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callback: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    duration_s: float = Field(ge=0, le=3600, strict=True)


_VITALS = TypeAdapter(VitalReport | list[VitalReport])
_UI = TypeAdapter(FrameReport | CallbackReport | list[FrameReport | CallbackReport])


async def _parse(request: Request, adapter: TypeAdapter[Any]) -> list[Any]:
    """Beacons arrive as JSON whatever their content type (`navigator.sendBeacon` sends text/plain
    for strings), so the body is decoded here rather than by FastAPI's content-type check."""
    body = await read_body_limited(request, MAX_BODY_BYTES)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from None
    try:
        parsed = adapter.validate_python(data)
    except ValidationError as exc:
        details = validation_details(list(exc.errors()))
        where = ", ".join(f"{d['loc']}: {d['message']}" for d in details[:5])
        raise ApiError(422, f"invalid report: {where}", details=details) from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > MAX_ITEMS:
        raise ApiError(413, f"at most {MAX_ITEMS} reports per request, got {len(items)}")
    return items


router = APIRouter(prefix="/api/v1/performance", tags=["performance"])

_VITALS_BODY = {"requestBody": {"content": {"application/json": {"schema": _VITALS.json_schema()}}}}
_UI_BODY = {"requestBody": {"content": {"application/json": {"schema": _UI.json_schema()}}}}


@router.get("/summary", response_model=PerformanceSummary)
async def summary() -> PerformanceSummary:
    """Per operation count, mean, min, max, p50, p95, p99 since start, and the latest resources."""
    return PerformanceSummary.model_validate(get_performance_monitor().get_metrics_summary())


@router.post("/vitals", status_code=202, openapi_extra=_VITALS_BODY, response_model=VitalsAccepted)
async def vitals(request: Request, tracker: Tracker) -> VitalsAccepted:
    """Core Web Vitals beacons, one or a list; each is rated by web.dev's boundaries."""
    reports: list[VitalReport] = await _parse(request, _VITALS)
    ratings = [VitalRating(name=r.name, rating=tracker.record_web_vital(r.name, r.value)) for r in reports]
    return VitalsAccepted(accepted=len(reports), ratings=ratings)


@router.get("/vitals", response_model=dict[str, VitalSummary])
async def vitals_summary(
    tracker: Tracker, window_seconds: Annotated[float, Query(gt=0, le=86_400)] = 300
) -> dict[str, VitalSummary]:
    """p75 of each vital over the window, with its rating."""
    summary = tracker.vitals_summary(window_seconds)
    return {name: VitalSummary.model_validate(v) for name, v in summary.items()}


@router.post("/ui", status_code=202, openapi_extra=_UI_BODY, response_model=UiAccepted)
async def ui(request: Request, tracker: Tracker) -> UiAccepted:
    """Frame times (`{"frame_time_ms"}`) and callback durations (`{"callback", "duration_s"}`)."""
    reports: list[FrameReport | CallbackReport] = await _parse(request, _UI)
    frames = callbacks = 0
    for r in reports:
        if isinstance(r, FrameReport):
            tracker.record_frame_time(r.frame_time_ms)
            frames += 1
        else:
            tracker.record_callback_duration(r.callback, r.duration_s)
            callbacks += 1
    return UiAccepted(accepted=len(reports), frames=frames, callbacks=callbacks)


@router.get("/ui", response_model=UiMetrics)
async def ui_metrics(tracker: Tracker) -> UiMetrics:
    """Recent frame times and callback durations (ring buffers) with totals since start."""
    return UiMetrics.model_validate(tracker.ui.get_ui_metrics())


@router.get("/alerts", response_model=AlertsView)
async def alerts(tracker: Tracker, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> AlertsView:
    """The most recent alerts (newest first) and the state of every threshold."""
    return AlertsView.model_validate(
        {
            "alerts": tracker.dispatcher.recent_alerts(limit),
            "thresholds": tracker.thresholds_state(),
            "channels": [c.name for c in tracker.dispatcher.channels],
        }
    )


@router.get(
    "/history",
    responses={
        200: {
            "description": "JSON, or with `format=csv` one row per snapshot and operation",
            "model": PerformanceHistory,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def history(format: Annotated[Literal["json", "csv"], Query()] = "json") -> Response:
    """The snapshot history; `format=csv` gives one row per snapshot and operation."""
    monitor = get_performance_monitor()
    if format == "csv":
        return Response(
            export_history_csv(monitor),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="performance-history.csv"'},
        )
    return Response(export_history_json(monitor), media_type="application/json")
