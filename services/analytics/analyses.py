"""The analyses the API serves, as one object the routes call (no HTTP here).

Each analysis is cached by the fleet cache (`shared.cache`), keyed by its filters, tagged so
that new events invalidate only the analyses they can change.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from services.analytics import anomalies, patterns
from services.analytics.anomalies import AnomalyParameters
from services.analytics.filters import EventFilter
from services.analytics.summary import access_summary
from services.analytics.worker_pool import WorkerPool


class AnalyticsService:
    def __init__(self, pool: asyncpg.Pool, workers: WorkerPool) -> None:
        self.pool = pool
        self.workers = workers

    async def get_unique_patterns_analysis(self, flt: EventFilter) -> dict[str, Any]:
        aggregates = await patterns.fetch_aggregates(self.pool, flt)
        return await self.workers.run(patterns.build_patterns, aggregates, flt.model_dump(mode="json"))

    async def get_summary(self, flt: EventFilter) -> dict[str, Any]:
        return await access_summary(self.pool, flt)

    async def get_anomalies(self, flt: EventFilter, params: AnomalyParameters) -> dict[str, Any]:
        inputs = await anomalies.fetch_inputs(self.pool, flt, params)
        detected = await self.workers.run(
            anomalies.detect_in_frames, inputs["denials"], inputs["profile"], params
        )
        unusual_events = await anomalies.fetch_unusual_events(self.pool, flt, detected["cells"])
        return anomalies.assemble(inputs, detected, unusual_events, params, flt)
