"""The process-wide PerformanceMonitor: timings per named operation, RSS and CPU, bounded history.

Usage::

    monitor = get_performance_monitor()
    with monitor.measure("db.insert_batch"):
        ...
    async with monitor.measure("upload.parse"):
        ...

    @monitor.timed("analytics.summary")      # sync or async functions
    async def summary(...): ...

    monitor.record("upload.rows_per_second", 41_000, unit="per_second")
    monitor.get_metrics_summary()

Memory is bounded: each operation keeps two fixed-size HDR histograms (since start and since
the last snapshot), the number of distinct operation names is capped, and the snapshot history
is a ring buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

import psutil

from shared.performance._histogram import Series, SeriesStats
from shared.resources import wait_for_resources

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

OVERFLOW_OPERATION = "_other"
DEFAULT_MAX_OPERATIONS = 500
DEFAULT_HISTORY_SIZE = 360
DEFAULT_SNAPSHOT_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    timestamp: str
    rss_bytes: int
    cpu_percent: float
    system_cpu_percent: float
    system_memory_percent: float
    num_threads: int
    open_fds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One background snapshot: resources at that moment and what each operation did since the
    previous snapshot (only operations that ran in between)."""

    resources: ResourceSnapshot
    interval_s: float
    operations: dict[str, SeriesStats]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.resources.as_dict(),
            "interval_s": self.interval_s,
            "operations": {name: s.as_dict() for name, s in self.operations.items()},
        }


class _Measurement:
    """Context manager usable with `with` and `async with`; records even when the body raises."""

    __slots__ = ("_monitor", "_name", "_start")

    def __init__(self, monitor: PerformanceMonitor, name: str) -> None:
        self._monitor = monitor
        self._name = name
        self._start = 0.0

    def __enter__(self) -> _Measurement:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._monitor.record(self._name, time.perf_counter() - self._start)

    async def __aenter__(self) -> _Measurement:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class PerformanceMonitor:
    """Thread-safe: timings may come from the event loop and from worker threads at once."""

    def __init__(
        self, *, max_operations: int = DEFAULT_MAX_OPERATIONS, history_size: int = DEFAULT_HISTORY_SIZE
    ) -> None:
        if max_operations < 1 or history_size < 1:
            raise ValueError("max_operations and history_size must be >= 1")
        self.max_operations = max_operations
        self._lock = threading.Lock()
        self._operations: dict[str, Series] = {}
        self._watchers: dict[str, Callable[[float], None]] = {}
        self._history: deque[HistoryEntry] = deque(maxlen=history_size)
        self._latest: ResourceSnapshot | None = None
        self._last_snapshot_at = time.monotonic()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # the first call only primes the counter
        psutil.cpu_percent(None)
        self._task: asyncio.Task[None] | None = None
        self.snapshot_interval_s = DEFAULT_SNAPSHOT_INTERVAL_S
        self.started_at = datetime.now(UTC).isoformat()

    # -- recording --------------------------------------------------------------------------

    def record(self, name: str, value: float, *, unit: str = "seconds") -> None:
        """Record one observation of `name` (a duration in seconds unless `unit` says otherwise)."""
        with self._lock:
            op = self._operations.get(name)
            if op is None:
                if len(self._operations) >= self.max_operations and name != OVERFLOW_OPERATION:
                    # A runaway set of names (ids in the name) must not grow memory without end.
                    log.warning(
                        "performance monitor: operation cap %d reached; %r counted as %r",
                        self.max_operations,
                        name,
                        OVERFLOW_OPERATION,
                    )
                    name = OVERFLOW_OPERATION
                    op = self._operations.get(name)
                if op is None:
                    op = self._operations[name] = Series(unit)
            op.record(value)
        if self._watchers:
            watcher = self._watchers.get(name)
            if watcher is not None:
                watcher(value)

    def watch(self, name: str, callback: Callable[[float], None]) -> None:
        """Call `callback(value)` after each observation of `name` (one per name; the tracker
        uses this to judge thresholds on operations). Runs on the recording thread, so it must
        be cheap and must not block."""
        self._watchers = {**self._watchers, name: callback}  # copy: readers never see a dict mid-update

    def unwatch(self, name: str) -> None:
        self._watchers = {k: v for k, v in self._watchers.items() if k != name}

    def measure(self, name: str) -> _Measurement:
        """Time a block: `with monitor.measure("x"):` or `async with monitor.measure("x"):`."""
        return _Measurement(self, name)

    @overload
    def timed(self, name: Callable[P, R]) -> Callable[P, R]: ...
    @overload
    def timed(self, name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def timed(self, name: str | Callable[P, R] | None = None) -> Any:
        """Decorator for sync and async functions; the name defaults to `module.qualname`."""
        if callable(name):
            return self.timed(None)(name)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            op_name = name or f"{func.__module__}.{func.__qualname__}"
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    with self.measure(op_name):
                        return await func(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.measure(op_name):
                    return func(*args, **kwargs)

            return wrapper

        return decorate

    # -- resources and history --------------------------------------------------------------

    def sample_resources(self) -> ResourceSnapshot:
        """Read RSS, CPU and thread counts now (a few /proc reads; run off the loop if hot)."""
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            cpu = self._process.cpu_percent(None)
            threads = self._process.num_threads()
            try:
                fds = self._process.num_fds()
            except (AttributeError, psutil.Error):
                fds = -1
        snap = ResourceSnapshot(
            timestamp=datetime.now(UTC).isoformat(),
            rss_bytes=int(rss),
            cpu_percent=float(cpu),
            system_cpu_percent=float(psutil.cpu_percent(None)),
            system_memory_percent=float(psutil.virtual_memory().percent),
            num_threads=int(threads),
            open_fds=int(fds),
        )
        with self._lock:
            self._latest = snap
        return snap

    def take_snapshot(self) -> HistoryEntry:
        """Sample resources, close the current interval of every operation, append to history."""
        resources = self.sample_resources()
        now = time.monotonic()
        with self._lock:
            interval_s = now - self._last_snapshot_at
            self._last_snapshot_at = now
            ops: dict[str, SeriesStats] = {}
            for op_name, op in self._operations.items():
                closed = op.close_interval()
                if closed is not None:
                    ops[op_name] = closed
            entry = HistoryEntry(resources, round(interval_s, 3), ops)
            self._history.append(entry)
        return entry

    def latest_resources(self) -> ResourceSnapshot | None:
        with self._lock:
            return self._latest

    def history(self) -> list[HistoryEntry]:
        with self._lock:
            return list(self._history)

    @property
    def history_length(self) -> int:
        return len(self._history)

    @property
    def history_size(self) -> int:
        maxlen = self._history.maxlen
        assert maxlen is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        return maxlen

    def set_history_size(self, size: int) -> None:
        if size < 1:
            raise ValueError("history size must be >= 1")
        with self._lock:
            self._history = deque(self._history, maxlen=size)

    # -- reading ----------------------------------------------------------------------------

    def operation_stats(self) -> dict[str, SeriesStats]:
        with self._lock:
            return {name: op.stats() for name, op in self._operations.items()}

    def get_metrics_summary(self) -> dict[str, Any]:
        """Per operation count, mean, min, max, p50, p95, p99 (since start) and the latest resources."""
        ops = self.operation_stats()
        latest = self.latest_resources() or self.sample_resources()
        return {
            "started_at": self.started_at,
            "operations": {name: ops[name].as_dict() for name in sorted(ops)},
            "resources": latest.as_dict(),
            "snapshot_interval_s": self.snapshot_interval_s,
            "history_length": self.history_length,
        }

    # -- background snapshots ---------------------------------------------------------------

    def start(self, interval_s: float | None = None) -> None:
        """Start snapshotting every `interval_s` seconds on the running loop (idempotent)."""
        if interval_s is not None:
            if interval_s <= 0:
                raise ValueError("snapshot interval must be > 0")
            self.snapshot_interval_s = interval_s
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="performance-snapshots")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            await wait_for_resources()  # held while the process's resource guard is throttling
            try:
                await asyncio.to_thread(self.take_snapshot)
            except Exception:  # one bad /proc read must not end the snapshots
                log.exception("performance snapshot failed")

    def reset(self) -> None:
        """Forget every operation and the history (for tests and after a deliberate restart)."""
        with self._lock:
            self._operations.clear()
            self._history.clear()
            self._latest = None


_monitor: PerformanceMonitor | None = None
_monitor_lock = threading.Lock()


def get_performance_monitor() -> PerformanceMonitor:
    """The one monitor of this process; its figures are also exported to /metrics."""
    global _monitor
    if _monitor is None:
        with _monitor_lock:
            if _monitor is None:
                from shared.performance.prometheus import register_collector

                _monitor = PerformanceMonitor()
                register_collector(_monitor)
    return _monitor
