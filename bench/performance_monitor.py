"""PerformanceMonitor: cost of timing an operation, and memory after millions of observations.

Baselines in the same run: the bare `time.perf_counter()` pair the monitor wraps, and the
original design (every duration appended to a list per kind). The monitor must add little per
call and keep its memory flat where the list grows with every observation.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from shared.performance.monitor import PerformanceMonitor


def _per_call_ns(fn: Any, n: int) -> float:
    start = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - start) / n


def run(quick: bool) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    monitor = PerformanceMonitor()
    durations: list[float] = []

    def bare(k: int) -> None:
        for _ in range(k):
            t = time.perf_counter()
            _ = time.perf_counter() - t

    def with_list(k: int) -> None:
        for _ in range(k):
            t = time.perf_counter()
            durations.append(time.perf_counter() - t)

    def with_monitor(k: int) -> None:
        for _ in range(k):
            with monitor.measure("bench.op"):
                pass

    def with_decorator(k: int) -> None:
        @monitor.timed("bench.decorated")
        def op() -> None:
            pass

        for _ in range(k):
            op()

    timings = {
        name: round(_per_call_ns(fn, n), 1)
        for name, fn in (
            ("bare_ns", bare),
            ("list_ns", with_list),
            ("monitor_ns", with_monitor),
            ("decorator_ns", with_decorator),
        )
    }

    # Memory after n more observations: the list grows, the monitor's histograms do not.
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fresh_list: list[float] = []
    for i in range(n):
        fresh_list.append(i * 1e-6)
    list_bytes = tracemalloc.get_traced_memory()[0] - base
    del fresh_list
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        monitor.record("bench.memory", (i % 5000) * 1e-6)
    monitor_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    start = time.perf_counter()
    summary = monitor.get_metrics_summary()
    summary_ms = (time.perf_counter() - start) * 1000
    return {
        "observations": n,
        **timings,
        "monitor_overhead_vs_bare_ns": round(timings["monitor_ns"] - timings["bare_ns"], 1),
        "memory_list_bytes": list_bytes,
        "memory_monitor_bytes": monitor_bytes,
        "summary_ms": round(summary_ms, 2),
        "operations": len(summary["operations"]),
    }
