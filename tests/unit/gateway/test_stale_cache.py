"""The stale-answer cache: bounded by entries and bytes, expires by age."""

from __future__ import annotations

import time

from services.gateway.stale_cache import StaleCache


def test_lru_eviction_by_count_and_bytes() -> None:
    cache = StaleCache(max_entries=2, max_total_bytes=10, max_entry_bytes=8)
    cache.put("a", 200, [], b"1234")
    cache.put("b", 200, [], b"1234")
    assert cache.get("a", 60) is not None  # a is now the most recent
    cache.put("c", 200, [], b"12")
    assert cache.get("b", 60) is None
    assert len(cache) == 2
    cache.put("d", 200, [], b"123456")  # 4 + 2 + 6 > 10 bytes: the oldest go
    assert cache.get("d", 60) is not None
    assert cache.get("a", 60) is None
    cache.put("huge", 200, [], b"123456789")  # larger than one entry may be
    assert cache.get("huge", 60) is None


def test_entries_older_than_max_age_are_not_served() -> None:
    cache = StaleCache()
    cache.put("k", 200, [(b"content-type", b"application/json")], b"{}")
    time.sleep(0.02)
    assert cache.get("k", 0.01) is None
    assert len(cache) == 0
    cache.put("k", 200, [], b"{}")
    entry = cache.get("k", 60)
    assert entry is not None
    assert entry.body == b"{}"
