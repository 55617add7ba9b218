"""The engine with the in-process tier only: TTL, LRU bound, single flight, XFetch,
stale-if-error, invalidation, sync callers. A fake clock makes time explicit."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from shared.cache import HierarchicalCacheManager, MemoryCacheManager, cache_with_lock, last_cache_result
from shared.cache.xfetch import should_refresh_early


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(clock: Clock) -> HierarchicalCacheManager:
    # beta=0 turns XFetch off, so these tests see plain TTL behaviour.
    return MemoryCacheManager(l1_size=3, clock=clock, beta=0.0, stale_ttl_s=100)


def counting(manager: HierarchicalCacheManager, ttl: float = 10, **kw: Any) -> tuple[Any, list[int]]:
    calls: list[int] = []

    @cache_with_lock(ttl_seconds=ttl, manager=manager, name=f"test.counting.{id(calls)}", **kw)
    async def compute(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.01)
        return x * 10

    return compute, calls


async def test_values_expire_after_their_ttl(manager: HierarchicalCacheManager, clock: Clock) -> None:
    compute, calls = counting(manager, ttl=10)
    assert await compute(1) == 10
    clock.now += 9.9
    assert await compute(1) == 10
    assert calls == [1]
    clock.now += 0.2
    assert await compute(1) == 10
    assert calls == [1, 1]


async def test_l1_is_a_bounded_lru(manager: HierarchicalCacheManager) -> None:
    compute, calls = counting(manager)
    for x in (1, 2, 3):
        await compute(x)
    await compute(1)  # 1 is now the most recently used
    await compute(4)  # evicts 2, the least recently used
    assert len(manager.l1.keys()) == 3
    assert manager.l1.stats.evictions == 1
    await compute(1)
    await compute(2)
    assert calls == [1, 2, 3, 4, 2]


async def test_concurrent_callers_of_a_cold_key_share_one_computation(
    manager: HierarchicalCacheManager,
) -> None:
    compute, calls = counting(manager)
    results = await asyncio.gather(*(compute(7) for _ in range(200)))
    assert results == [70] * 200
    assert calls == [7]
    report = await manager.report()
    (stats,) = report["caches"].values()
    assert stats["computations"] == 1


async def test_a_failed_recomputation_serves_the_stale_value(
    manager: HierarchicalCacheManager, clock: Clock
) -> None:
    fail = False

    @cache_with_lock(ttl_seconds=10, manager=manager, name="test.flaky")
    async def flaky() -> str:
        if fail:
            raise ConnectionError("database down")
        return "value"

    assert await flaky() == "value"
    clock.now += 11
    fail = True
    assert await flaky() == "value"
    result = last_cache_result.get()
    assert result is not None
    assert result.status == "stale"
    assert "database down" in (result.error or "")
    clock.now += 200  # past the stale window too: nothing left to serve
    with pytest.raises(ConnectionError):
        await flaky()


async def test_no_stale_value_means_the_error_propagates(manager: HierarchicalCacheManager) -> None:
    @cache_with_lock(ttl_seconds=10, manager=manager, name="test.broken")
    async def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await broken()


def test_xfetch_formula() -> None:
    # now − δ·β·ln(r) ≥ expiry
    assert not should_refresh_early(now=100, delta=1, expires_at=110, rand=0.5)  # 100.69 < 110
    assert should_refresh_early(now=109.5, delta=1, expires_at=110, rand=0.5)  # 110.19 ≥ 110
    assert should_refresh_early(now=100, delta=1, expires_at=110, rand=1e-6)  # 113.8: a rare early draw
    assert not should_refresh_early(now=100, delta=0, expires_at=110, rand=1e-6)


async def test_hot_keys_are_refreshed_before_they_expire(clock: Clock) -> None:
    manager = MemoryCacheManager(l1_size=10, clock=clock, beta=1000.0)
    version = 0

    @cache_with_lock(ttl_seconds=60, manager=manager, name="test.hot")
    async def hot() -> int:
        nonlocal version
        version += 1
        await asyncio.sleep(0.01)
        return version

    assert await hot() == 1
    clock.now += 59  # δ≈0.01 s, β=1000: refreshing is now very likely on each read
    values = [await hot() for _ in range(20)]
    assert values[0] == 1  # the reader that triggers the refresh is not kept waiting
    for _ in range(100):
        if version >= 2:
            break
        await asyncio.sleep(0.01)
    assert version >= 2
    clock.now += 2  # past the original expiry: the refreshed value is still fresh
    assert await hot() >= 2
    report = await manager.report()
    assert report["caches"]["test.hot"]["early_refreshes"] >= 1


async def test_invalidation_by_tag_and_prefix_spares_the_rest(
    manager: HierarchicalCacheManager, clock: Clock
) -> None:
    calls: list[str] = []

    @cache_with_lock(ttl_seconds=60, manager=manager, name="test.tagged.a", tags=lambda f: (f"facility:{f}",))
    async def by_facility(f: str) -> str:
        calls.append(f)
        return f

    await by_facility("north")
    await by_facility("south")
    clock.now += 1
    await manager.invalidate_tags(["facility:north"])
    clock.now += 1
    await by_facility("north")
    await by_facility("south")
    assert calls == ["north", "south", "north"]
    await manager.invalidate_prefix("test.tagged")
    clock.now += 1
    await by_facility("south")
    assert calls == ["north", "south", "north", "south"]


async def test_an_entry_computed_before_an_invalidation_is_never_fresh(
    manager: HierarchicalCacheManager, clock: Clock
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    @cache_with_lock(ttl_seconds=60, manager=manager, name="test.race", tags=("events",))
    async def slow() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return calls

    first = asyncio.create_task(slow())
    await started.wait()
    clock.now += 1
    await manager.invalidate_tags(["events"])  # new data arrives while the old snapshot computes
    clock.now += 1
    release.set()
    assert await first == 1
    assert await slow() == 2  # the entry stored by the first call predates the invalidation


def test_sync_functions_work_outside_an_event_loop(manager: HierarchicalCacheManager) -> None:
    calls: list[int] = []

    @cache_with_lock(ttl_seconds=60, manager=manager, name="test.sync")
    def square(x: int) -> int:
        calls.append(threading.get_ident())
        return x * x

    assert square(4) == 16
    assert square(4) == 16
    assert len(calls) == 1


async def test_sync_functions_work_inside_a_running_loop(manager: HierarchicalCacheManager) -> None:
    @cache_with_lock(ttl_seconds=60, manager=manager, name="test.sync_in_loop")
    def cube(x: int) -> int:
        return x**3

    assert cube(3) == 27
    assert cube(3) == 27
    report = await manager.report()
    assert report["caches"]["test.sync_in_loop"]["computations"] == 1
    assert report["caches"]["test.sync_in_loop"]["hits"] == {"l1": 1}
