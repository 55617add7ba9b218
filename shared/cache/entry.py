"""What every tier stores: the value and what the engine needs to judge it."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CacheEntry", "dumps", "loads"]


@dataclass
class CacheEntry:
    """A cached value with its timing.

    `expires_at` ends freshness; until `stale_until` the entry is kept as the stale-if-error
    fallback. `started_at` is when the computation began (before its database snapshot):
    an invalidation recorded later than that makes the entry invalid. `delta` is how long
    the computation took (XFetch's δ). Times are wall-clock seconds, comparable across
    processes on one host.
    """

    value: Any
    name: str
    started_at: float
    delta: float
    expires_at: float
    stale_until: float
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def usable_stale(self, now: float) -> bool:
        return now < self.stale_until


def dumps(entry: CacheEntry) -> bytes:
    # pickle, because the values include DataFrames and arbitrary result objects; the tiers
    # are private to the fleet (its own Redis and cache directory), never fed by clients.
    return pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> CacheEntry:
    entry = pickle.loads(data)  # trusted: see dumps()
    if not isinstance(entry, CacheEntry):
        raise TypeError(f"not a cache entry: {type(entry).__name__}")
    return entry
