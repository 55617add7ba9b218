"""Analytics HTTP routes: thin; the computations live in their own modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.analytics.anomalies import AnomalyParameters
from services.analytics.deps import Service
from services.analytics.filters import Filters
from services.analytics.responses import AccessSummary, AnomalyReport, PatternsAnalysis
from shared.cache import last_cache_result

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])


def _cache_headers(response: Response) -> None:
    """`X-Cache: hit|miss|shared|stale`, the tier, and `Age`; a stale answer says so (RFC 7234 Warning)."""
    result = last_cache_result.get()
    if result is None:
        return
    response.headers["X-Cache"] = result.status
    if result.tier:
        response.headers["X-Cache-Tier"] = result.tier
    response.headers["Age"] = str(max(0, int(result.age_s)))
    if result.status == "stale":
        response.headers["Warning"] = '110 - "Response is Stale"'


@router.get("/patterns", response_model=PatternsAnalysis)
async def unique_patterns(service: Service, flt: Filters, response: Response) -> PatternsAnalysis:
    """The unique-patterns analysis: users, doors, pairs, time, results, recommendations."""
    result = await service.get_unique_patterns_analysis(flt)
    _cache_headers(response)
    return PatternsAnalysis.model_validate(result)


@router.get("/summary", response_model=AccessSummary)
async def summary(service: Service, flt: Filters, response: Response) -> AccessSummary:
    """Totals, success rate, events per hour (UTC) and the busiest doors."""
    result = await service.get_summary(flt)
    _cache_headers(response)
    return AccessSummary.model_validate(result)


@router.get("/anomalies", response_model=AnomalyReport)
async def detected_anomalies(
    service: Service,
    flt: Filters,
    response: Response,
    burst_min_denials: Annotated[int, Query(ge=2, le=1000)] = 3,
    burst_window_s: Annotated[float, Query(gt=0, le=86400)] = 60.0,
    history_min_events: Annotated[int, Query(ge=2, le=1_000_000)] = 20,
    unusual_hour_max_share: Annotated[float, Query(gt=0, lt=1)] = 0.02,
    held_open_threshold_s: Annotated[float, Query(ge=0, le=86400)] = 30.0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> AnomalyReport:
    """Denial bursts, unusual hours, invalid badges granted, doors held open, entries without badge.

    Over at most ANOMALIES_MAX_WINDOW_DAYS (422 beyond); without `start`, the
    ANOMALIES_DEFAULT_WINDOW_DAYS up to `end` or the newest event."""
    params = AnomalyParameters(
        burst_min_denials=burst_min_denials,
        burst_window_s=burst_window_s,
        history_min_events=history_min_events,
        unusual_hour_max_share=unusual_hour_max_share,
        held_open_threshold_s=held_open_threshold_s,
        limit=limit,
    )
    if flt.start is not None and flt.end is not None:
        # Refused before the cache: a request that can never be answered is not a computation.
        service.anomaly_filter(flt, None)
    result = await service.get_anomalies(flt, params)
    _cache_headers(response)
    return AnomalyReport.model_validate(result)
