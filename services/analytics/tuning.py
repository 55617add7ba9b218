"""Knobs the optimizer may turn on a running analytics process (`/admin/tuning`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.analytics.analyses import CACHE_TTLS
from services.analytics.worker_pool import WorkerPool
from shared.cache import HierarchicalCacheManager

BOUNDS: dict[str, dict[str, float]] = {
    "chunk_size": {"min": 1_000, "max": 1_000_000},
    "max_workers": {"min": 1, "max": 32},
    "cache_ttl_seconds": {"min": 1, "max": 86_400},
}


class TuningUpdate(BaseModel):
    """A partial update: only the given knobs change."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int | None = Field(None, ge=1_000, le=1_000_000, description="rows per upload chunk")
    max_workers: int | None = Field(None, ge=1, le=32, description="worker processes for pandas work")
    cache_ttl_seconds: dict[str, float] | None = Field(None, description="TTL per cache name")

    @field_validator("cache_ttl_seconds")
    @classmethod
    def _known_caches(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(CACHE_TTLS))
        if unknown:
            raise ValueError(f"unknown cache(s) {unknown}; known: {sorted(CACHE_TTLS)}")
        low, high = BOUNDS["cache_ttl_seconds"]["min"], BOUNDS["cache_ttl_seconds"]["max"]
        for name, ttl in value.items():
            if not low <= ttl <= high:
                raise ValueError(
                    f"cache_ttl_seconds.{name} must be between {low:g} and {high:g}, got {ttl:g}"
                )
        return value


@dataclass
class AnalyticsTuning:
    chunk_size: int
    workers: WorkerPool
    cache: HierarchicalCacheManager
    max_memory_mb: int

    def __post_init__(self) -> None:
        # The configured values: where the optimizer returns to, and its ceiling for knobs that
        # it only shrinks under pressure.
        self.defaults: dict[str, Any] = {
            "chunk_size": self.chunk_size,
            "max_workers": self.workers.max_workers,
            "cache_ttl_seconds": dict(CACHE_TTLS),
        }

    def current(self) -> dict[str, Any]:
        return {
            "chunk_size": self.chunk_size,
            "max_workers": self.workers.max_workers,
            "cache_ttl_seconds": {name: self.cache.ttl_for(name, ttl) for name, ttl in CACHE_TTLS.items()},
            "max_memory_mb": self.max_memory_mb,
            "defaults": self.defaults,
            "bounds": BOUNDS,
        }

    def apply(self, update: TuningUpdate) -> dict[str, Any]:
        if update.chunk_size is not None:
            self.chunk_size = update.chunk_size
        if update.max_workers is not None:
            self.workers.resize(update.max_workers)
        for name, ttl in (update.cache_ttl_seconds or {}).items():
            self.cache.set_ttl(name, ttl)
        return self.current()
