"""The performance page's aggregation: PromQL-style quantiles, cache ratios, per-section failure."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.gateway.dashboard_data import (
    DashboardSources,
    DashboardState,
    cache_hit_ratios,
    histogram_quantile,
    histogram_summary,
    parse_metrics,
)
from shared.settings import FleetSettings
from tools.dev.embedded import free_port


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: top of the first bucket
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    # Observations beyond the last finite bucket: the last bound is the estimate.
    assert histogram_quantile(0.9, [(1.0, 1.0), (float("inf"), 10.0)]) == 1.0


def test_histogram_summary_reads_prometheus_text() -> None:
    registry = CollectorRegistry()
    h = Histogram("latency_seconds", "x", ["path"], buckets=(0.1, 1.0), registry=registry)
    for v in (0.05, 0.05, 0.5, 2.0):
        h.labels("/a").observe(v)
    h.labels("/b").observe(0.05)
    summary = histogram_summary(parse_metrics(generate_latest(registry).decode()), "latency_seconds")
    assert summary["count"] == 5
    assert summary["mean"] == pytest.approx(2.65 / 5)
    assert summary["p50"] == pytest.approx(0.1 * 2.5 / 3)


def test_cache_hit_ratios_per_tier() -> None:
    report = {
        "tiers": {"l1": {"hits": 3, "misses": 1}, "l2": {"hits": 0, "misses": 0}},
        "caches": {"summary": {"hits": {"l1": 3}, "misses": {"l1": 1}}},
    }
    assert cache_hit_ratios(report) == {"l1": 0.75, "l2": None}
    assert cache_hit_ratios({"summary": {"l1": {"hits": 1, "misses": 3}}}) == {"l1": 0.25}


def test_a_down_source_fails_only_its_own_section() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = FleetSettings(
        ANALYTICS_URL=dead,
        OPTIMIZER_URL=dead,
        REPLICATOR_URL=dead,
        EVENT_PROCESSOR_URL=dead,
        GATEWAY_URL=dead,
    )

    async def main() -> dict[str, object]:
        async with aiohttp.ClientSession() as http:
            sources = DashboardSources(
                settings,
                http,
                breakers=lambda: {"kafka": {"state": "closed", "open": 0, "half_open": 0, "closed": 0}},
                http_registry=CollectorRegistry(),
                processor_in_process=True,
                state=DashboardState(),
            )
            return await sources.collect()

    body = asyncio.run(main())
    assert body["breakers"] == {
        "ok": True,
        "data": {"kafka": {"state": "closed", "open": 0, "half_open": 0, "closed": 0}},
        "fetched_ms": body["breakers"]["fetched_ms"],  # type: ignore[index]
    }
    assert body["events"]["ok"] is True  # type: ignore[index]
    for name in ("cache", "replication", "optimizer", "alerts"):
        section = body[name]
        assert section["ok"] is False, name  # type: ignore[index]
        assert section["error"].startswith("unreachable"), section  # type: ignore[index]
    requests = body["requests"]["data"]  # type: ignore[index]
    assert requests["gateway"]["ok"] is True
    assert requests["analytics"]["ok"] is False


def test_events_per_second_sums_each_replicas_own_increase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processor replicas stored 10 events/s together; one of them restarted meanwhile."""
    clock = iter([100.0, 102.0, 104.0, 104.1])
    monkeypatch.setattr("services.gateway.dashboard_data.time.monotonic", lambda: next(clock))
    state = DashboardState()
    assert state.rate({"10.0.0.1": 1000.0, "10.0.0.2": 5000.0}) is None  # no interval yet
    # Alternating which replica a DNS name reached would have read as 0/s or a huge jump.
    assert state.rate({"10.0.0.1": 1010.0, "10.0.0.2": 5010.0}) == pytest.approx(10.0)
    # 10.0.0.2 restarted: its counter is back at 8; that is its increase, not -5002.
    assert state.rate({"10.0.0.1": 1022.0, "10.0.0.2": 8.0}) == pytest.approx(10.0)
    # A second tab polling at once keeps the last rate instead of measuring 0.1 s.
    assert state.rate({"10.0.0.1": 1022.0, "10.0.0.2": 8.0}) == pytest.approx(10.0)
