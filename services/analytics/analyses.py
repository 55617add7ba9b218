"""The analyses the API serves, as one object the routes call (no HTTP here).

Each analysis is cached by the fleet cache (`shared.cache`), keyed by its filters and tagged
by facility, so new events invalidate only the analyses they can change. Database reads go
through the `database` breaker: while it is open the cache serves the last value (stale)
instead of queueing requests on a dead server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from services.analytics import anomalies, patterns
from services.analytics.anomalies import AnomalyParameters, AnomalyWindow, WindowTooLarge
from services.analytics.filters import EventFilter
from services.analytics.invalidation import filter_tags
from services.analytics.summary import access_summary
from services.analytics.worker_pool import WorkerPool
from shared.breaker import CircuitBreaker
from shared.cache import HierarchicalCacheManager, cache_with_lock
from shared.errors import ApiError

# Cache names (the keys of `cache_ttl_seconds` in the tuning API) and their default TTLs.
CACHE_TTLS = {"patterns": 600.0, "summary": 60.0, "anomalies": 120.0}


def _tags(flt: EventFilter, **_: Any) -> tuple[str, ...]:
    return filter_tags(flt.facility_id)


class AnalyticsService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        workers: WorkerPool,
        cache_manager: HierarchicalCacheManager,
        database_breaker: CircuitBreaker,
        anomaly_window: AnomalyWindow | None = None,
    ) -> None:
        self.pool = pool
        self.workers = workers
        self.cache_manager = cache_manager
        self.db = database_breaker
        self.anomaly_window = anomaly_window or AnomalyWindow()

    @cache_with_lock(ttl_seconds=CACHE_TTLS["patterns"], name="patterns", tags=_tags)
    async def get_unique_patterns_analysis(self, flt: EventFilter) -> dict[str, Any]:
        aggregates = await self.db.call(patterns.fetch_aggregates, self.pool, flt)
        return await self.workers.run(patterns.build_patterns, aggregates, flt.model_dump(mode="json"))

    @cache_with_lock(ttl_seconds=CACHE_TTLS["summary"], name="summary", tags=_tags)
    async def get_summary(self, flt: EventFilter) -> dict[str, Any]:
        return await self.db.call(access_summary, self.pool, flt)

    @cache_with_lock(ttl_seconds=CACHE_TTLS["anomalies"], name="anomalies", tags=_tags)
    async def get_anomalies(self, flt: EventFilter, params: AnomalyParameters) -> dict[str, Any]:
        newest = None if flt.end is not None else await self.db.call(anomalies.newest_event, self.pool, flt)
        flt = self.anomaly_filter(flt, newest)
        inputs = await self.db.call(anomalies.fetch_inputs, self.pool, flt, params)
        detected = await self.workers.run(
            anomalies.detect_in_frames, inputs["denials"], inputs["profile"], params
        )
        unusual_events = await self.db.call(anomalies.fetch_unusual_events, self.pool, flt, detected["cells"])
        return anomalies.assemble(inputs, detected, unusual_events, params, flt)

    def anomaly_filter(self, flt: EventFilter, newest: datetime | None) -> EventFilter:
        """The bounded window of the anomaly analysis for `flt` (422 when it spans too much)."""
        try:
            return anomalies.bounded_filter(flt, newest, self.anomaly_window)
        except WindowTooLarge as exc:
            raise ApiError(
                422, str(exc), code="window_too_large", details={"max_days": self.anomaly_window.maximum.days}
            ) from None

    def cached_functions(self) -> dict[str, Any]:
        """Cache name → bound method, for the warmer."""
        return {
            "patterns": self.get_unique_patterns_analysis,
            "summary": self.get_summary,
            "anomalies": self.get_anomalies,
        }
