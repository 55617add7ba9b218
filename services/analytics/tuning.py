"""Knobs the optimizer may turn on a running analytics process (`/admin/tuning`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, field_validator

from services.analytics.analyses import CACHE_TTLS
from services.analytics.worker_pool import WorkerPool
from shared.admin import Knob, PartialUpdate, TuningView, bounds_of
from shared.cache import HierarchicalCacheManager

KNOBS = {
    "chunk_size": Knob(1_000, 1_000_000, "rows per upload chunk"),
    "max_workers": Knob(1, 32, "worker processes for pandas work"),
    "cache_ttl_seconds": Knob(1, 86_400, "TTL of each cache, by cache name"),
}

CacheTtl = Annotated[float, KNOBS["cache_ttl_seconds"].value_field()]


class TuningUpdate(PartialUpdate):
    """A partial update: only the given knobs change."""

    chunk_size: int | None = KNOBS["chunk_size"].update_field()
    max_workers: int | None = KNOBS["max_workers"].update_field()
    cache_ttl_seconds: dict[str, CacheTtl] | None = Field(
        None, description=KNOBS["cache_ttl_seconds"].description
    )

    @field_validator("cache_ttl_seconds")
    @classmethod
    def _known_caches(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        unknown = sorted(set(value or {}) - set(CACHE_TTLS))
        if unknown:
            raise ValueError(f"unknown cache(s) {unknown}; known: {sorted(CACHE_TTLS)}")
        return value


class AnalyticsTuningView(TuningView):
    chunk_size: int
    max_workers: int
    cache_ttl_seconds: dict[str, float]
    max_memory_mb: int = Field(description="memory budget of an upload (ANALYTICS_MAX_MEMORY_MB, fixed)")


@dataclass
class AnalyticsTuning:
    chunk_size: int
    workers: WorkerPool
    cache: HierarchicalCacheManager
    max_memory_mb: int
    # The configured values: where the optimizer returns to, and its ceiling for knobs that
    # it only shrinks under pressure.
    defaults: dict[str, int | float | dict[str, int | float]] = field(init=False)

    def __post_init__(self) -> None:
        self.defaults = {
            "chunk_size": self.chunk_size,
            "max_workers": self.workers.max_workers,
            "cache_ttl_seconds": dict(CACHE_TTLS),
        }

    def current(self) -> AnalyticsTuningView:
        return AnalyticsTuningView(
            chunk_size=self.chunk_size,
            max_workers=self.workers.max_workers,
            cache_ttl_seconds={name: self.cache.ttl_for(name, ttl) for name, ttl in CACHE_TTLS.items()},
            max_memory_mb=self.max_memory_mb,
            defaults=self.defaults,
            bounds=bounds_of(KNOBS),
        )

    def apply(self, update: TuningUpdate) -> AnalyticsTuningView:
        if update.chunk_size is not None:
            self.chunk_size = update.chunk_size
        if update.max_workers is not None:
            self.workers.resize(update.max_workers)
        for name, ttl in (update.cache_ttl_seconds or {}).items():
            self.cache.set_ttl(name, ttl)
        return self.current()
