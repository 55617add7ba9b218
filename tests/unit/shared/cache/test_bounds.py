"""The engine's bookkeeping stays bounded whatever the number of distinct queries or tags."""

from __future__ import annotations

import time

from shared.cache import MemoryCacheManager
from shared.cache.bounded import BoundedCounts
from shared.cache.entry import CacheEntry
from shared.cache.invalidation import InvalidationLog


async def test_100k_distinct_queries_keep_usage_and_call_specs_bounded() -> None:
    manager = MemoryCacheManager(l1_size=100, max_tracked_keys=5_000)

    async def compute() -> int:
        return 1

    for i in range(100_000):
        await manager.get_or_compute("q", f"q:{i}", compute, ttl_s=60, call_spec=("q", (), {"f": str(i)}))
    assert len(manager.usage) == 5_000
    assert len(manager.call_specs) == 5_000
    assert len(manager.l1.keys()) == 100
    # The most recent keys are the ones kept.
    assert "q:99999" in manager.call_specs
    assert "q:0" not in manager.call_specs
    assert manager.call_specs.evicted == 95_000


def test_drained_counts_can_be_restored_without_growing_past_the_bound() -> None:
    counts = BoundedCounts(3)
    for key in "abcab":
        counts.add(key)
    drained = counts.drain()
    assert drained == {"c": 1, "a": 2, "b": 2}
    counts.add("d")
    counts.restore(drained.items())
    assert len(counts) == 3
    assert counts.drain() == {"c": 1, "a": 2, "b": 2}


def _entry(started_at: float, *tags: str) -> CacheEntry:
    return CacheEntry(
        value=1, name="n", started_at=started_at, delta=0, expires_at=1e12, stale_until=1e12, tags=tags
    )


def test_invalidation_tags_stay_bounded_as_facilities_grow_and_stay_conservative() -> None:
    log = InvalidationLog(max_fields=1_000)
    base = time.time()
    before_all = _entry(base - 1, "events", "facility:f0")
    for i in range(100_000):
        log.record(f"tag:facility:f{i}", base + i * 1e-3)
    assert len(log) == 1_000
    # f0's own time was forgotten, but the floor keeps its entry invalid: never less
    # invalidation than was asked for.
    assert not log.valid("k", before_all)
    assert log.floor >= base
    # An entry computed after every invalidation is valid, forgotten tag or not.
    after_all = _entry(base + 200, "events", "facility:f0")
    assert log.valid("k", after_all)
    # A recent tag still has its own time: an entry between the floor and it is invalid.
    recent = _entry(base + 99_999 * 1e-3 - 0.0005, "facility:f99999")
    assert not log.valid("k", recent)
    summary = log.summary()
    assert summary["tags"] == 1_000
    assert len(summary["latest"]) == 20
