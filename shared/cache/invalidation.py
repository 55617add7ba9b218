"""Invalidation by tag or key prefix, visible to every process.

An invalidation records WHEN it happened, per tag or prefix. An entry is valid only if its
computation started after every invalidation of its tags and of the prefixes of its key, so
an entry computed from a snapshot older than the change can never be served as fresh — not
even one a slow process writes to Redis after the invalidation was announced (the race a
plain "delete the keys" invalidation loses). Nothing is flushed: other entries stay valid.

Every process applies invalidations locally; through Redis they reach the others at once
(pub/sub) and survive for processes that start later (a hash of the latest times).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from shared.cache.entry import CacheEntry

__all__ = ["InvalidationLog"]


class InvalidationLog:
    def __init__(self, skew_s: float = 0.0) -> None:
        # skew_s widens the comparison when the fleet's hosts' clocks may differ.
        self.skew_s = skew_s
        self._tags: dict[str, float] = {}
        self._prefixes: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, field: str, at: float) -> bool:
        """Apply `tag:<t>` or `prefix:<p>` at time `at`; returns whether it moved forward."""
        kind, _, name = field.partition(":")
        target = self._tags if kind == "tag" else self._prefixes
        with self._lock:
            if target.get(name, 0.0) >= at:
                return False
            target[name] = at
            return True

    def record_many(self, fields: Iterable[tuple[str, float]]) -> None:
        for field, at in fields:
            self.record(field, at)

    def invalidated_at(self, key: str, entry: CacheEntry) -> float:
        latest = 0.0
        with self._lock:
            for tag in entry.tags:
                latest = max(latest, self._tags.get(tag, 0.0))
            for prefix, at in self._prefixes.items():
                if key.startswith(prefix):
                    latest = max(latest, at)
        return latest

    def valid(self, key: str, entry: CacheEntry) -> bool:
        at = self.invalidated_at(key, entry)
        return not at or entry.started_at > at + self.skew_s

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {"tags": dict(self._tags), "prefixes": dict(self._prefixes)}
