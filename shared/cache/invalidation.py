"""Invalidation by tag or key prefix, visible to every process.

An invalidation records WHEN it happened, per tag or prefix. An entry is valid only if its
computation started after every invalidation of its tags and of the prefixes of its key, so
an entry computed from a snapshot older than the change can never be served as fresh — not
even one a slow process writes to Redis after the invalidation was announced (the race a
plain "delete the keys" invalidation loses). Nothing is flushed: other entries stay valid.

Every process applies invalidations locally; through Redis they reach the others at once
(pub/sub) and survive for processes that start later (a sorted set of the latest times).

Both are bounded (`max_fields`, 10 000 by default) whatever the number of distinct tags, such
as one per `facility_id`: when the log is full the oldest invalidation is forgotten and the
*floor* rises to its time. The floor applies to every entry, so forgetting makes the cache
invalidate more (entries computed before the floor), never less.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from shared.cache.entry import CacheEntry

__all__ = ["InvalidationLog"]


class InvalidationLog:
    def __init__(self, skew_s: float = 0.0, max_fields: int = 10_000) -> None:
        # skew_s widens the comparison when the fleet's hosts' clocks may differ.
        self.skew_s = skew_s
        self.max_fields = max_fields
        self.floor = 0.0
        # Insertion order is roughly time order (each update re-inserts), so the first entry
        # is the one to forget; an out-of-order one only makes the floor more conservative.
        self._tags: dict[str, float] = {}
        self._prefixes: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, field: str, at: float) -> bool:
        """Apply `tag:<t>` or `prefix:<p>` at time `at`; returns whether it moved forward."""
        kind, _, name = field.partition(":")
        target = self._tags if kind == "tag" else self._prefixes
        with self._lock:
            if max(target.get(name, 0.0), self.floor) >= at:
                return False
            target.pop(name, None)
            target[name] = at
            self._forget_oldest()
            return True

    def _forget_oldest(self) -> None:
        while len(self._tags) + len(self._prefixes) > self.max_fields:
            source = self._tags if self._tags else self._prefixes
            oldest = next(iter(source))
            self.floor = max(self.floor, source.pop(oldest))

    def raise_floor(self, at: float) -> None:
        """Every entry computed before `at` is invalid (the shared log forgot what came before)."""
        with self._lock:
            self.floor = max(self.floor, at)

    def record_many(self, fields: Iterable[tuple[str, float]]) -> None:
        for field, at in sorted(fields, key=lambda item: item[1]):
            self.record(field, at)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tags) + len(self._prefixes)

    def invalidated_at(self, key: str, entry: CacheEntry) -> float:
        with self._lock:
            latest = self.floor
            for tag in entry.tags:
                latest = max(latest, self._tags.get(tag, 0.0))
            for prefix, at in self._prefixes.items():
                if key.startswith(prefix):
                    latest = max(latest, at)
        return latest

    def valid(self, key: str, entry: CacheEntry) -> bool:
        at = self.invalidated_at(key, entry)
        return not at or entry.started_at > at + self.skew_s

    def summary(self, recent: int = 20) -> dict[str, Any]:
        """For the cache report: sizes, the floor and the latest few (not up to 10 000 tags)."""
        with self._lock:
            latest = sorted(
                [
                    *(("tag:" + k, v) for k, v in self._tags.items()),
                    *(("prefix:" + k, v) for k, v in self._prefixes.items()),
                ],
                key=lambda item: item[1],
                reverse=True,
            )[:recent]
            return {
                "tags": len(self._tags),
                "prefixes": len(self._prefixes),
                "max_fields": self.max_fields,
                "floor": self.floor,
                "latest": dict(latest),
            }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"tags": dict(self._tags), "prefixes": dict(self._prefixes), "floor": self.floor}
