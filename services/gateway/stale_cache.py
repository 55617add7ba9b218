"""Recent good GET answers, kept to answer (marked stale) while their upstream is down.

A small hand-written LRU rather than a caching library: the entries are raw upstream answers
(status, headers, possibly compressed bytes) that must be replayed byte for byte, bounded by
count and total bytes, and nothing in the fleet's dependencies does exactly that.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    stored_at: float
    status_code: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def age(self, now: float) -> float:
        return now - self.stored_at


class StaleCache:
    def __init__(
        self,
        *,
        max_entries: int = 1024,
        max_total_bytes: int = 64 * 1024 * 1024,
        max_entry_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        self.max_entries = max_entries
        self.max_total_bytes = max_total_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if len(body) > self.max_entry_bytes:
            return
        self._drop(key)
        self._entries[key] = CachedAnswer(time.monotonic(), status_code, headers, body)
        self._bytes += len(body)
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_total_bytes):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.body)

    def get(self, key: str, max_age: float) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.age(time.monotonic()) > max_age:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
