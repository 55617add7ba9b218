"""The PerformanceMonitor's figures in /metrics, computed at scrape time from the same histograms.

A custom collector (rather than separate prometheus_client metrics updated alongside) guarantees
that `/metrics` and `GET /api/v1/performance/summary` never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shared.performance.monitor import PerformanceMonitor

OPERATION_METRIC = "performance_operation"


class PerformanceCollector(Collector):
    def __init__(self, monitor: PerformanceMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        stats = self._monitor.operation_stats()
        # A summary with quantiles per operation; the unit is a label because the monitor also
        # holds scores (CLS) and rates (rows per second) next to durations.
        summary = Metric(OPERATION_METRIC, "Observations per named operation (since start)", "summary")
        minimum = GaugeMetricFamily(
            "performance_operation_min", "Smallest observation", labels=["operation", "unit"]
        )
        maximum = GaugeMetricFamily(
            "performance_operation_max", "Largest observation", labels=["operation", "unit"]
        )
        for name, s in stats.items():
            labels = {"operation": name, "unit": s.unit}
            for q, v in (("0.5", s.p50), ("0.95", s.p95), ("0.99", s.p99)):
                summary.add_sample(OPERATION_METRIC, {**labels, "quantile": q}, v)
            summary.add_sample(OPERATION_METRIC + "_count", labels, float(s.count))
            summary.add_sample(OPERATION_METRIC + "_sum", labels, s.mean * s.count)
            minimum.add_metric([name, s.unit], s.min)
            maximum.add_metric([name, s.unit], s.max)
        yield summary
        yield minimum
        yield maximum

        latest = self._monitor.latest_resources()
        if latest is not None:
            yield GaugeMetricFamily(
                "performance_rss_bytes", "Resident memory at the last snapshot", value=latest.rss_bytes
            )
            yield GaugeMetricFamily(
                "performance_cpu_percent",
                "Process CPU at the last snapshot (100 = one core)",
                value=latest.cpu_percent,
            )
            yield GaugeMetricFamily(
                "performance_system_cpu_percent",
                "Machine CPU at the last snapshot",
                value=latest.system_cpu_percent,
            )
        yield GaugeMetricFamily(
            "performance_history_length",
            "Snapshots kept in the history ring",
            value=self._monitor.history_length,
        )


_registered: set[int] = set()


def register_collector(monitor: PerformanceMonitor, registry: CollectorRegistry = REGISTRY) -> None:
    """Register once per (monitor, registry); repeated calls are harmless."""
    key = id(monitor) ^ id(registry)
    if key in _registered:
        return
    registry.register(PerformanceCollector(monitor))
    _registered.add(key)
