"""Resource guards: thresholds, hysteresis, the metric, the warning and the throttle."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from shared.resources import ResourceGuard, ResourceLimits, ResourceSample, process_sampler
from shared.settings import FleetSettings

MIB = 1024 * 1024
LIMITS = ResourceLimits(
    max_memory_bytes=1000 * MIB, memory_warning_threshold=0.8, max_cpu_cores=2, cpu_warning_threshold=0.9
)


def throttled_metric(resource: str) -> float | None:
    return REGISTRY.get_sample_value("resource_throttled", {"resource": resource})


def test_limits_come_from_the_fleet_settings() -> None:
    settings = FleetSettings(
        MAX_MEMORY=256, MEMORY_WARNING_THRESHOLD=0.5, MAX_CPU_CORES=4, CPU_WARNING_THRESHOLD=0.7
    )
    limits = ResourceLimits.from_settings(settings)
    assert limits.max_memory_bytes == 256 * MIB
    assert (limits.memory_warning_threshold, limits.max_cpu_cores, limits.cpu_warning_threshold) == (
        0.5,
        4,
        0.7,
    )


async def test_crossing_warns_once_throttles_and_releases_below_the_margin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ResourceGuard(LIMITS, service="test")
    guard.evaluate(ResourceSample(memory_bytes=500 * MIB, cpu_cores=0.5))
    assert not guard.throttled
    assert await guard.wait_until_clear(timeout_s=0.01)

    with caplog.at_level(logging.WARNING, logger="shared.resources"):
        guard.evaluate(ResourceSample(memory_bytes=850 * MIB, cpu_cores=0.5))
        guard.evaluate(ResourceSample(memory_bytes=860 * MIB, cpu_cores=0.5))
    assert guard.throttled
    assert guard.reasons == ["memory"]
    assert throttled_metric("memory") == 1
    assert len([r for r in caplog.records if "memory use at" in r.getMessage()]) == 1
    assert not await guard.wait_until_clear(timeout_s=0.01)

    waiter = asyncio.create_task(guard.wait_until_clear(timeout_s=5))
    # Just under the threshold is not enough (hysteresis): the throttle stays on.
    guard.evaluate(ResourceSample(memory_bytes=790 * MIB, cpu_cores=0.5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    guard.evaluate(ResourceSample(memory_bytes=700 * MIB, cpu_cores=0.5))
    assert await waiter
    assert not guard.throttled
    assert throttled_metric("memory") == 0


def test_cpu_is_measured_against_max_cpu_cores() -> None:
    guard = ResourceGuard(LIMITS, service="test")
    guard.evaluate(ResourceSample(memory_bytes=0, cpu_cores=1.9))
    assert guard.reasons == ["cpu"]
    assert guard.status()["ratios"] == {"memory": 0.0, "cpu": 0.95}


async def test_the_real_sampler_sees_this_process() -> None:
    sample_fn = process_sampler()
    ballast = bytearray(64 * MIB)  # resident once touched
    ballast[::4096] = b"x" * len(ballast[::4096])
    sample = sample_fn()
    assert sample.memory_bytes > 64 * MIB
    # A 64 MiB budget with a 50% threshold is crossed by this process alone.
    guard = ResourceGuard(ResourceLimits(64 * MIB, 0.5, 1, 0.99), service="test", sampler=sample_fn)
    guard.start(interval_s=0.05)
    try:
        await asyncio.sleep(0.2)
        assert guard.throttled
        assert "memory" in guard.reasons
    finally:
        await guard.stop()
    del ballast
