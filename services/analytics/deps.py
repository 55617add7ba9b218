"""Typed request dependencies of the analytics routes: what the lifespan put on `app.state`."""

from __future__ import annotations

# Every dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hand-off per dependency per request for what is an attribute read.
from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.analytics.analyses import AnalyticsService
from services.analytics.settings import AnalyticsSettings
from services.analytics.tuning import AnalyticsTuning
from services.analytics.worker_pool import WorkerPool
from shared.cache import HierarchicalCacheManager
from shared.errors import ApiError
from shared.performance.realtime import RealTimePerformanceTracker


async def app_settings(request: Request) -> AnalyticsSettings:
    settings: AnalyticsSettings = request.app.state.settings
    return settings


async def get_service(request: Request) -> AnalyticsService:
    service: AnalyticsService = request.app.state.analytics
    return service


async def get_tuning(request: Request) -> AnalyticsTuning:
    tuning: AnalyticsTuning = request.app.state.tuning
    return tuning


async def get_cache(request: Request) -> HierarchicalCacheManager:
    cache: HierarchicalCacheManager = request.app.state.cache
    return cache


async def get_workers(request: Request) -> WorkerPool:
    workers: WorkerPool = request.app.state.workers
    return workers


async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def get_tracker(request: Request) -> RealTimePerformanceTracker:
    tracker: RealTimePerformanceTracker | None = getattr(request.app.state, "performance_tracker", None)
    if tracker is None:
        raise ApiError(503, "performance tracking is starting", headers={"Retry-After": "1"})
    return tracker


Settings = Annotated[AnalyticsSettings, Depends(app_settings)]
Service = Annotated[AnalyticsService, Depends(get_service)]
Tuning = Annotated[AnalyticsTuning, Depends(get_tuning)]
Cache = Annotated[HierarchicalCacheManager, Depends(get_cache)]
Workers = Annotated[WorkerPool, Depends(get_workers)]
Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
Tracker = Annotated[RealTimePerformanceTracker, Depends(get_tracker)]
