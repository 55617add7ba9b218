"""Background work held by the process's resource guard: snapshots, cache warming, the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from shared import resources
from shared.cache import IntelligentCacheWarmer, MemoryCacheManager
from shared.performance.monitor import PerformanceMonitor
from shared.resources import (
    ResourceGuard,
    ResourceLimits,
    ResourceSample,
    get_resource_guard,
    start_resource_guard,
    wait_for_resources,
)
from shared.settings import FleetSettings

MIB = 1024 * 1024
LIMITS = ResourceLimits(
    max_memory_bytes=1000 * MIB, memory_warning_threshold=0.8, max_cpu_cores=2, cpu_warning_threshold=0.9
)


class Level:
    """The memory the sampler reports; the test moves it."""

    def __init__(self, mib: int) -> None:
        self.mib = mib

    def __call__(self) -> ResourceSample:
        return ResourceSample(memory_bytes=self.mib * MIB, cpu_cores=0.1)


@pytest.fixture
def registered() -> Iterator[tuple[ResourceGuard, Level]]:
    """A guard registered as this process's, fed by a sampler the test controls."""
    level = Level(100)
    guard = ResourceGuard(LIMITS, service="test", sampler=level)
    previous = resources._guard
    resources._guard = guard
    try:
        yield guard, level
    finally:
        resources._guard = previous


async def test_snapshots_wait_while_throttled_and_resume_after(
    registered: tuple[ResourceGuard, Level],
) -> None:
    guard, level = registered
    monitor = PerformanceMonitor(history_size=100)
    monitor.start(0.02)
    try:
        await asyncio.sleep(0.15)
        assert len(monitor.history()) >= 2

        level.mib = 900  # over 80 % of 1000 MiB
        guard.check()
        await asyncio.sleep(0.05)  # a snapshot already past its wait may finish
        held = len(monitor.history())
        await asyncio.sleep(0.3)
        assert len(monitor.history()) == held  # 15 intervals passed, no snapshot

        level.mib = 500
        guard.check()
        await asyncio.sleep(0.15)
        assert len(monitor.history()) >= held + 2
    finally:
        await monitor.stop()


async def test_wait_for_resources_without_a_guard_returns_at_once() -> None:
    previous = resources._guard
    resources._guard = None
    try:
        assert await asyncio.wait_for(wait_for_resources(), timeout=0.1)
    finally:
        resources._guard = previous


async def test_wait_for_resources_times_out_while_throttled(registered: tuple[ResourceGuard, Level]) -> None:
    guard, level = registered
    level.mib = 950
    guard.check()
    assert await wait_for_resources(timeout_s=0.05) is False


async def test_the_cache_warmer_pauses_by_default_while_throttled(
    registered: tuple[ResourceGuard, Level],
) -> None:
    guard, level = registered
    warmer = IntelligentCacheWarmer(MemoryCacheManager(l1_size=4), {})
    assert warmer.should_pause() is False
    level.mib = 900
    guard.check()
    assert warmer.should_pause() is True
    level.mib = 100
    guard.check()
    assert warmer.should_pause() is False


async def test_start_samples_at_once_and_a_stopped_guard_is_replaced() -> None:
    previous = resources._guard
    resources._guard = None
    try:
        # 64 MiB at a 10 % threshold: any Python process crosses it.
        tiny = FleetSettings(MAX_MEMORY=64, MEMORY_WARNING_THRESHOLD=0.1)
        guard = start_resource_guard(tiny, service="first", interval_s=60)
        assert get_resource_guard() is guard
        assert guard.throttled  # known before anything awaited
        assert start_resource_guard(tiny, service="second") is guard  # one per process
        await guard.stop()
        assert not guard.throttled  # a stopped guard holds nothing
        assert await wait_for_resources(timeout_s=0.01)

        roomy = FleetSettings(MAX_MEMORY=1_000_000)
        replacement = start_resource_guard(roomy, service="again", interval_s=60)
        assert replacement is not guard
        assert replacement.limits.max_memory_bytes == 1_000_000 * MIB
        assert not replacement.throttled
        await replacement.stop()
    finally:
        resources._guard = previous
