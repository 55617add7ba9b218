"""`/admin/tuning` (bearer ADMIN_TOKEN) and the cache report and invalidation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from services.analytics.tuning import AnalyticsTuning, TuningUpdate
from shared.admin import AdminOnly
from shared.cache import HierarchicalCacheManager
from shared.errors import ApiError

router = APIRouter()


def get_tuning(request: Request) -> AnalyticsTuning:
    tuning: AnalyticsTuning = request.app.state.tuning
    return tuning


def get_cache(request: Request) -> HierarchicalCacheManager:
    cache: HierarchicalCacheManager = request.app.state.cache
    return cache


Tuning = Annotated[AnalyticsTuning, Depends(get_tuning)]
Cache = Annotated[HierarchicalCacheManager, Depends(get_cache)]


@router.get("/admin/tuning", tags=["admin"])
async def read_tuning(_: AdminOnly, tuning: Tuning) -> dict[str, Any]:
    """Current chunk size, worker count and cache TTLs, with their bounds."""
    return tuning.current()


@router.put("/admin/tuning", tags=["admin"])
async def update_tuning(_: AdminOnly, tuning: Tuning, update: TuningUpdate) -> dict[str, Any]:
    """Change any of the knobs; applied at once, without a restart."""
    return tuning.apply(update)


@router.get("/api/v1/cache/report", tags=["cache"])
async def cache_report(cache: Cache) -> dict[str, Any]:
    """Per tier: entries, hits, misses, evictions, promotions; per cache: hits and computations."""
    return await cache.report()


class Invalidation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list, max_length=100)
    prefix: str | None = Field(None, min_length=1, max_length=200)


@router.post("/api/v1/cache/invalidate", tags=["cache"])
async def invalidate(_: AdminOnly, cache: Cache, body: Invalidation) -> dict[str, Any]:
    """Invalidate by tag(s) and/or key prefix, in every analytics process (admin only)."""
    if not body.tags and body.prefix is None:
        raise ApiError(422, "give `tags` or `prefix`")
    if body.tags:
        await cache.invalidate_tags(body.tags)
    if body.prefix is not None:
        await cache.invalidate_prefix(body.prefix)
    return {"invalidated": {"tags": body.tags, "prefix": body.prefix}}
