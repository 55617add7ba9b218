"""PerformanceMonitor: per-operation statistics, decorators, bounded memory, history export, /metrics."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.performance import (
    PerformanceMonitor,
    export_history_csv,
    export_history_json,
    get_performance_monitor,
)
from shared.performance.monitor import OVERFLOW_OPERATION
from shared.performance.prometheus import register_collector


def test_summary_has_exact_count_mean_min_max_and_quantiles_within_one_percent() -> None:
    monitor = PerformanceMonitor()
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=-4, sigma=1.0, size=20_000)
    for v in values:
        monitor.record("db.query", float(v))
    monitor.record("other", 0.5)

    summary = monitor.get_metrics_summary()
    db = summary["operations"]["db.query"]
    assert db["count"] == 20_000
    assert db["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert db["min"] == pytest.approx(values.min())
    assert db["max"] == pytest.approx(values.max())
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert db[key] == pytest.approx(np.percentile(values, q), rel=0.01), key
    assert db["unit"] == "seconds"
    assert summary["operations"]["other"]["count"] == 1
    assert summary["resources"]["rss_bytes"] > 10_000_000
    assert summary["resources"]["num_threads"] >= 1


def test_operations_are_kept_apart_not_pooled_by_kind() -> None:
    monitor = PerformanceMonitor()
    monitor.record("upload.parse", 1.0)
    monitor.record("upload.store", 3.0)
    ops = monitor.get_metrics_summary()["operations"]
    assert ops["upload.parse"]["max"] == 1.0
    assert ops["upload.store"]["min"] == 3.0


def test_context_manager_and_decorators_time_sync_and_async_code_even_when_it_raises() -> None:
    monitor = PerformanceMonitor()

    @monitor.timed("sync.work")
    def work() -> int:
        time.sleep(0.02)
        return 1

    @monitor.timed
    async def awork() -> int:
        await asyncio.sleep(0.02)
        return 2

    @monitor.timed()
    def fails() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        assert await awork() == 2
        async with monitor.measure("block.async"):
            await asyncio.sleep(0.01)

    assert work() == 1
    asyncio.run(main())
    with monitor.measure("block.sync"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError):
        fails()

    ops = monitor.get_metrics_summary()["operations"]
    assert ops["sync.work"]["count"] == 1
    assert 0.02 <= ops["sync.work"]["max"] < 0.5
    (async_name,) = [name for name in ops if name.endswith("<locals>.awork")]
    assert async_name.startswith(__name__)
    assert ops[async_name]["min"] >= 0.02
    assert ops["block.async"]["count"] == 1
    assert ops["block.sync"]["min"] >= 0.01
    assert any(name.endswith("fails") for name in ops)


def test_distinct_operation_names_are_capped() -> None:
    monitor = PerformanceMonitor(max_operations=3)
    for i in range(10):
        monitor.record(f"op{i}", 0.001)
    ops = monitor.get_metrics_summary()["operations"]
    assert set(ops) == {"op0", "op1", "op2", OVERFLOW_OPERATION}
    assert ops[OVERFLOW_OPERATION]["count"] == 7


def test_history_is_a_ring_with_per_interval_statistics() -> None:
    monitor = PerformanceMonitor(history_size=3)
    monitor.record("a", 0.1)
    monitor.record("a", 0.3)
    first = monitor.take_snapshot()
    assert first.operations["a"].count == 2
    assert first.operations["a"].max == pytest.approx(0.3)
    second = monitor.take_snapshot()
    assert second.operations == {}  # nothing ran in between
    for _ in range(5):
        monitor.take_snapshot()
    assert len(monitor.history()) == 3
    # The since-start figures are not reset by snapshots.
    assert monitor.get_metrics_summary()["operations"]["a"]["count"] == 2


def test_history_exports_to_json_and_long_form_csv() -> None:
    monitor = PerformanceMonitor()
    monitor.record("a", 0.25)
    monitor.record("b", 2.0)
    monitor.take_snapshot()
    monitor.take_snapshot()

    body = orjson.loads(export_history_json(monitor))
    assert len(body["history"]) == 2
    assert body["history"][0]["operations"]["b"]["max"] == 2.0
    assert body["history"][0]["rss_bytes"] > 0

    rows = list(csv.DictReader(io.StringIO(export_history_csv(monitor))))
    assert [r["operation"] for r in rows] == ["a", "b", ""]
    assert float(rows[0]["p50"]) == pytest.approx(0.25)
    assert rows[0]["timestamp"] == rows[1]["timestamp"] != rows[2]["timestamp"]
    assert int(rows[2]["rss_bytes"]) > 0


def test_memory_stays_flat_over_200_000_observations() -> None:
    import tracemalloc

    monitor = PerformanceMonitor()
    monitor.record("hot", 0.001)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(200_000):
        monitor.record("hot", (i % 1000) / 1e5)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, grown


def test_metrics_endpoint_shows_the_same_figures() -> None:
    monitor = PerformanceMonitor()
    for v in (0.1, 0.2, 0.3, 0.4):
        monitor.record("cache.load", v)
    monitor.record("upload.speed", 5000, unit="per_second")
    monitor.take_snapshot()
    registry = CollectorRegistry()
    register_collector(monitor, registry)
    register_collector(monitor, registry)  # idempotent

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    summary = monitor.get_metrics_summary()["operations"]
    samples = {
        (s.name, s.labels.get("operation"), s.labels.get("quantile")): s.value
        for s in families["performance_operation"].samples
    }
    assert samples[("performance_operation_count", "cache.load", None)] == 4
    assert samples[("performance_operation_sum", "cache.load", None)] == pytest.approx(1.0)
    assert samples[("performance_operation", "cache.load", "0.95")] == pytest.approx(
        summary["cache.load"]["p95"]
    )
    assert samples[("performance_operation", "upload.speed", "0.5")] == pytest.approx(5000, rel=0.01)
    assert families["performance_rss_bytes"].samples[0].value > 0


def test_get_performance_monitor_is_one_per_process() -> None:
    assert get_performance_monitor() is get_performance_monitor()


def test_bad_observations_are_refused() -> None:
    monitor = PerformanceMonitor()
    with pytest.raises(ValueError, match="finite"):
        monitor.record("x", float("nan"))
    with pytest.raises(ValueError, match="unit"):
        monitor.record("y", 1.0, unit="parsecs")


async def test_background_snapshots_fill_the_history() -> None:
    monitor = PerformanceMonitor(history_size=100)
    monitor.start(0.02)
    monitor.start()  # idempotent
    await asyncio.sleep(0.2)
    await monitor.stop()
    n = len(monitor.history())
    assert 3 <= n <= 11
    await asyncio.sleep(0.05)
    assert len(monitor.history()) == n
    assert not monitor.running


def test_a_value_too_large_to_scale_is_clamped_not_half_recorded() -> None:
    """The largest float overflows once scaled to the histogram's integer units; it used to raise after the
    window had counted it, and every later snapshot of that series failed (KeyError)."""
    monitor = PerformanceMonitor()
    monitor.record("huge", sys.float_info.max)
    monitor.record("huge", 0.5)
    monitor.take_snapshot()
    stats = monitor.get_metrics_summary()["operations"]["huge"]
    assert stats["count"] == 2
    assert stats["max"] == sys.float_info.max
