"""One named unit of work, seen twice: timed in the PerformanceMonitor and traced as a span.

    with operation("processor.store", batch=len(events)):
        ...

The span becomes the current one, so database client spans (asyncpg instrumentation) and
log lines inside the block carry its trace. With tracing off no span is started at all, so the
block costs the monitor's timing only.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Link

from shared.performance.monitor import get_performance_monitor
from shared.tracing import tracing_active

P = ParamSpec("P")
R = TypeVar("R")

_tracer = trace.get_tracer("sentinel_fleet")


@contextmanager
def operation(
    name: str, *, links: Sequence[Link] = (), **attributes: str | int | float | bool
) -> Iterator[trace.Span]:
    """Time `name` and run the block under a span of the same name (usable in async code)."""
    monitor = get_performance_monitor()
    start = time.perf_counter()
    try:
        if not tracing_active():
            # No exporter: skip the span machinery (context attach/detach), which costs several
            # times the timing itself, and hand out the API's no-op span.
            yield trace.INVALID_SPAN
        else:
            with _tracer.start_as_current_span(name, links=links, attributes=attributes) as span:
                yield span
    finally:
        monitor.record(name, time.perf_counter() - start)


def named_operation(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorator for an async function (a named database query, say): `operation(name)` per call."""

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with operation(name):
                return await func(*args, **kwargs)

        return wrapper

    return decorate


class OpenOperation:
    """An operation begun in one place and ended in another: a pipelined batch whose store runs
    in a task created before the code that finishes the batch. Work done `inside()` (and tasks
    created there, which copy the context) is under its span; `end()` times it once."""

    def __init__(self, name: str, links: Sequence[Link], attributes: dict[str, str | int | float | bool]):
        self.name = name
        self._start = time.perf_counter()
        self._span: trace.Span = trace.INVALID_SPAN
        if tracing_active():
            self._span = _tracer.start_span(name, links=links, attributes=attributes)
        self._ended = False

    @contextmanager
    def inside(self) -> Iterator[trace.Span]:
        """Make the span current for the block without ending it."""
        with trace.use_span(self._span, end_on_exit=False, record_exception=False) as span:
            yield span

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.end()
        get_performance_monitor().record(self.name, time.perf_counter() - self._start)


def open_operation(
    name: str, *, links: Sequence[Link] = (), **attributes: str | int | float | bool
) -> OpenOperation:
    """Begin `name` now and end it with `OpenOperation.end()`, possibly from other code."""
    return OpenOperation(name, links, attributes)
