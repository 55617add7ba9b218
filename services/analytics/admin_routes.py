"""`/admin/tuning` (bearer ADMIN_TOKEN) and the cache report and invalidation."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.analytics.deps import Cache, Tuning
from services.analytics.responses import CacheInvalidated, CacheReport, InvalidationResult
from services.analytics.tuning import AnalyticsTuningView, TuningUpdate
from shared.admin import AdminOnly
from shared.errors import ApiError

router = APIRouter()


@router.get("/admin/tuning", tags=["admin"], response_model=AnalyticsTuningView)
async def read_tuning(_: AdminOnly, tuning: Tuning) -> AnalyticsTuningView:
    """Current chunk size, worker count and cache TTLs, with their bounds."""
    return tuning.current()


@router.put("/admin/tuning", tags=["admin"], response_model=AnalyticsTuningView)
async def update_tuning(_: AdminOnly, tuning: Tuning, update: TuningUpdate) -> AnalyticsTuningView:
    """Change any of the knobs; applied at once, without a restart."""
    return tuning.apply(update)


@router.get("/api/v1/cache/report", tags=["cache"], response_model=CacheReport)
async def cache_report(cache: Cache) -> CacheReport:
    """Per tier: entries, hits, misses, evictions, promotions; per cache: hits and computations."""
    return CacheReport.model_validate(await cache.report())


class Invalidation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list, max_length=100)
    prefix: str | None = Field(None, min_length=1, max_length=200)


@router.post("/api/v1/cache/invalidate", tags=["cache"], response_model=InvalidationResult)
async def invalidate(_: AdminOnly, cache: Cache, body: Invalidation) -> InvalidationResult:
    """Invalidate by tag(s) and/or key prefix, in every analytics process (admin only)."""
    if not body.tags and body.prefix is None:
        raise ApiError(422, "give `tags` or `prefix`")
    if body.tags:
        await cache.invalidate_tags(body.tags)
    if body.prefix is not None:
        await cache.invalidate_prefix(body.prefix)
    return InvalidationResult(invalidated=CacheInvalidated(tags=body.tags, prefix=body.prefix))
