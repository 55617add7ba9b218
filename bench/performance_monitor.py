"""PerformanceMonitor: cost of timing an operation, and memory after millions of observations.

Baselines in the same run: the bare `time.perf_counter()` pair the monitor wraps, and the
original design (every duration appended to a list per kind). The monitor must add little per
call and keep its memory flat where the list grows with every observation.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any

from shared.performance.asgi import OperationTimingMiddleware
from shared.performance.monitor import PerformanceMonitor
from shared.performance.operation import operation

_SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/x"}


async def _empty_app(scope: Any, receive: Any, send: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    return {"type": "http.request"}


async def _send(message: Any) -> None:
    return None


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

    watched: list[float] = []
    monitor.watch("bench.watched", lambda v: watched.append(v) if len(watched) < 1 else None)

    def with_watched(k: int) -> None:
        # An operation a threshold watches: the tracker's window gets each value too.
        for _ in range(k):
            with monitor.measure("bench.watched"):
                pass

    def with_operation(k: int) -> None:
        # What the services use, with tracing off: the monitor's timing, no span.
        for _ in range(k):
            with operation("bench.operation"):
                pass

    def with_traced_operation(k: int) -> None:
        # The same with tracing on: a recording span per block (sampled, exported nowhere), the
        # cost a service pays with JAEGER_ENDPOINT or OTLP configured.
        from opentelemetry.sdk.trace import TracerProvider

        import shared.tracing
        from shared.performance import operation as operation_module

        tracer = operation_module._tracer
        operation_module._tracer = TracerProvider().get_tracer("bench")
        shared.tracing._initialised = True
        try:
            for _ in range(k):
                with operation("bench.traced"):
                    pass
        finally:
            shared.tracing._initialised = False
            operation_module._tracer = tracer

    def with_route(k: int) -> None:
        # The ASGI middleware around an empty app, against the same app called bare.
        loop = asyncio.new_event_loop()
        timed = OperationTimingMiddleware(_empty_app, monitor)

        async def go() -> None:
            for _ in range(k):
                await timed(_SCOPE.copy(), _receive, _send)

        loop.run_until_complete(go())
        loop.close()

    def bare_route(k: int) -> None:
        loop = asyncio.new_event_loop()

        async def go() -> None:
            for _ in range(k):
                await _empty_app(_SCOPE.copy(), _receive, _send)

        loop.run_until_complete(go())
        loop.close()

    timings = {
        name: round(_per_call_ns(fn, n), 1)
        for name, fn in (
            ("bare_ns", bare),
            ("list_ns", with_list),
            ("monitor_ns", with_monitor),
            ("decorator_ns", with_decorator),
            ("watched_ns", with_watched),
            ("operation_ns", with_operation),
            ("operation_traced_ns", with_traced_operation),
            ("asgi_bare_ns", bare_route),
            ("asgi_timed_ns", with_route),
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
        "operation_overhead_vs_bare_ns": round(timings["operation_ns"] - timings["bare_ns"], 1),
        "operation_traced_overhead_vs_bare_ns": round(timings["operation_traced_ns"] - timings["bare_ns"], 1),
        "route_overhead_ns": round(timings["asgi_timed_ns"] - timings["asgi_bare_ns"], 1),
        "memory_list_bytes": list_bytes,
        "memory_monitor_bytes": monitor_bytes,
        "summary_ms": round(summary_ms, 2),
        "operations": len(summary["operations"]),
    }
