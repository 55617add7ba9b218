"""Bounded, thread-safe bookkeeping of the engine: request counts and call specs per key.

Both are keyed by cache key, and clients choose the keys (every distinct filter is one), so
each keeps at most `max_keys` keys and forgets the least recently used. Hand-written on an
OrderedDict because the engine is called from its own loop thread and the service's loop,
and needs drain-and-restore for the warmer's flush; a library LRU would still need the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["BoundedCounts", "BoundedMap"]

V = TypeVar("V")


class BoundedMap(Generic[V]):
    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.evicted = 0
        self._data: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def setdefault(self, key: str, value: V) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            self._data[key] = value
            self._trim()
            return value

    def get(self, key: str) -> V | None:
        with self._lock:
            return self._data.get(key)

    def items(self) -> list[tuple[str, V]]:
        with self._lock:
            return list(self._data.items())

    def _trim(self) -> None:
        while len(self._data) > self.max_keys:
            self._data.popitem(last=False)
            self.evicted += 1

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._data))


class BoundedCounts(BoundedMap[int]):
    """Counts per key since the last `drain()`."""

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._data[key] = self._data.get(key, 0) + n
            self._data.move_to_end(key)
            self._trim()

    def drain(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._data)
            self._data.clear()
            return counts

    def restore(self, counts: Iterable[tuple[str, int]]) -> None:
        """Put drained counts back (a failed flush); newer counts of the same keys add up."""
        for key, n in counts:
            self.add(key, n)
