"""Resource guards: memory and CPU limits per service process, a warning, a metric, a throttle.

`MAX_MEMORY` (MiB) and `MAX_CPU_CORES` are the budget of one service process together with its
children (worker pools). When the share in use crosses `MEMORY_WARNING_THRESHOLD` or
`CPU_WARNING_THRESHOLD` the guard logs one warning, sets `resource_throttled{resource}` to 1
and holds background work (cache warming, snapshots, replication batches) that awaits
:meth:`ResourceGuard.wait_until_clear`. Requests are never held: shedding background work
is what frees room for them. The throttle is released only when the share falls a margin
below the threshold (hysteresis), so a value hovering at the threshold does not flap.

Usage in a lifespan::

    guard = start_resource_guard(settings, service="replicator")
    ...
    await guard.wait_until_clear()   # before each unit of background work
    ...
    await guard.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
from prometheus_client import Counter, Gauge

from shared.settings import FleetSettings

__all__ = [
    "ResourceGuard",
    "ResourceLimits",
    "ResourceSample",
    "get_resource_guard",
    "process_sampler",
    "start_resource_guard",
    "wait_for_resources",
]

log = logging.getLogger(__name__)

MEMORY_RATIO = Gauge("resource_memory_ratio", "Memory in use by this process and its children / MAX_MEMORY")
CPU_RATIO = Gauge("resource_cpu_ratio", "CPU used by this process and its children / MAX_CPU_CORES")
MEMORY_BYTES = Gauge("resource_memory_bytes", "Resident memory of this process and its children")
THROTTLED = Gauge(
    "resource_throttled",
    "1 while background work is held because a resource crossed its threshold",
    ["resource"],
)
CROSSINGS = Counter(
    "resource_threshold_crossings_total", "Times a resource crossed its warning threshold", ["resource"]
)

RESOURCES = ("memory", "cpu")
MIN_CPU_WINDOW_S = 0.2


@dataclass(frozen=True)
class ResourceLimits:
    max_memory_bytes: int
    memory_warning_threshold: float
    max_cpu_cores: float
    cpu_warning_threshold: float
    release_margin: float = 0.05

    @classmethod
    def from_settings(cls, settings: FleetSettings) -> ResourceLimits:
        return cls(
            max_memory_bytes=settings.max_memory * 1024 * 1024,
            memory_warning_threshold=settings.memory_warning_threshold,
            max_cpu_cores=float(settings.max_cpu_cores),
            cpu_warning_threshold=settings.cpu_warning_threshold,
        )


@dataclass(frozen=True)
class ResourceSample:
    memory_bytes: int
    cpu_cores: float  # cores busy on average since the previous sample


Sampler = Callable[[], ResourceSample]


def process_sampler(pid: int | None = None) -> Sampler:
    """Samples a process and its children; psutil keeps per-process CPU counters between calls."""
    root = psutil.Process(pid or os.getpid())
    known: dict[int, psutil.Process] = {root.pid: root}
    root.cpu_percent(None)  # the first call only primes the counter
    # CPU over a few milliseconds is noise (one busy tick reads as several cores): until
    # MIN_CPU_WINDOW_S has passed, the previous CPU figure is repeated and the counters kept.
    last = {"at": time.monotonic(), "cpu": 0.0}

    def sample() -> ResourceSample:
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            children = []
        current = {root.pid: root}
        fresh: set[int] = set()
        for child in children:
            proc = known.get(child.pid, child)
            if child.pid not in known:
                with contextlib.suppress(psutil.Error):
                    proc.cpu_percent(None)  # primes it; counted from the next sample on
                fresh.add(child.pid)
            current[child.pid] = proc
        known.clear()
        known.update(current)
        now = time.monotonic()
        measure_cpu = now - last["at"] >= MIN_CPU_WINDOW_S
        memory, cpu = 0, 0.0
        for proc in current.values():
            with contextlib.suppress(psutil.Error):
                memory += proc.memory_info().rss
                if measure_cpu and proc.pid not in fresh:
                    cpu += proc.cpu_percent(None) / 100.0
        if measure_cpu:
            last["at"], last["cpu"] = now, cpu
        return ResourceSample(memory_bytes=memory, cpu_cores=last["cpu"])

    return sample


class ResourceGuard:
    def __init__(self, limits: ResourceLimits, *, service: str, sampler: Sampler | None = None) -> None:
        self.limits = limits
        self.service = service
        self._sampler = sampler or process_sampler()
        self._throttled: dict[str, bool] = dict.fromkeys(RESOURCES, False)
        self._clear = asyncio.Event()
        self._clear.set()
        self._task: asyncio.Task[None] | None = None
        self.last_sample: ResourceSample | None = None
        self.ratios: dict[str, float] = dict.fromkeys(RESOURCES, 0.0)

    @property
    def throttled(self) -> bool:
        return any(self._throttled.values())

    @property
    def reasons(self) -> list[str]:
        return [name for name, on in self._throttled.items() if on]

    def thresholds(self) -> dict[str, float]:
        return {"memory": self.limits.memory_warning_threshold, "cpu": self.limits.cpu_warning_threshold}

    def evaluate(self, sample: ResourceSample) -> None:
        """Apply one sample: update ratios, metrics, the throttle; log each crossing once."""
        self.last_sample = sample
        self.ratios = {
            "memory": sample.memory_bytes / self.limits.max_memory_bytes,
            "cpu": sample.cpu_cores / self.limits.max_cpu_cores,
        }
        MEMORY_BYTES.set(sample.memory_bytes)
        MEMORY_RATIO.set(self.ratios["memory"])
        CPU_RATIO.set(self.ratios["cpu"])
        for name, threshold in self.thresholds().items():
            ratio = self.ratios[name]
            if not self._throttled[name] and ratio >= threshold:
                self._throttled[name] = True
                CROSSINGS.labels(resource=name).inc()
                log.warning(
                    "%s %s use at %.0f%% of its limit (threshold %.0f%%): holding background work",
                    self.service,
                    name,
                    ratio * 100,
                    threshold * 100,
                    extra={"resource": name, "ratio": round(ratio, 4), "threshold": threshold},
                )
            elif self._throttled[name] and ratio < threshold - self.limits.release_margin:
                self._throttled[name] = False
                log.info(
                    "%s %s use back to %.0f%% of its limit: background work resumes",
                    self.service,
                    name,
                    ratio * 100,
                    extra={"resource": name, "ratio": round(ratio, 4), "threshold": threshold},
                )
            THROTTLED.labels(resource=name).set(1 if self._throttled[name] else 0)
        if self.throttled:
            self._clear.clear()
        else:
            self._clear.set()

    def check(self) -> ResourceSample:
        sample = self._sampler()
        self.evaluate(sample)
        return sample

    async def wait_until_clear(self, timeout_s: float | None = None) -> bool:
        """Return at once when no threshold is crossed, else when the throttle lifts.

        Returns False when `timeout_s` passed with the throttle still on, so callers can choose
        to do a reduced amount of work rather than none.
        """
        if self._clear.is_set():
            return True
        try:
            await asyncio.wait_for(self._clear.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _sample_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.check()
            except Exception:  # a sampling hiccup must never stop the service
                log.exception("resource sampling failed")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, interval_s: float = 2.0) -> ResourceGuard:
        """Sample once now, so background work started right after already sees the state."""
        if not self.running:
            try:
                self.check()
            except Exception:
                log.exception("resource sampling failed")
            self._task = asyncio.create_task(
                self._sample_every(interval_s), name=f"resource-guard-{self.service}"
            )
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A stopped guard holds nothing: its last sample is no longer watched.
        self._throttled = dict.fromkeys(RESOURCES, False)
        for name in RESOURCES:
            THROTTLED.labels(resource=name).set(0)
        self._clear.set()

    def status(self) -> dict[str, object]:
        return {
            "throttled": self.throttled,
            "reasons": self.reasons,
            "ratios": {k: round(v, 4) for k, v in self.ratios.items()},
            "thresholds": self.thresholds(),
            "memory_bytes": self.last_sample.memory_bytes if self.last_sample else None,
            "max_memory_bytes": self.limits.max_memory_bytes,
            "max_cpu_cores": self.limits.max_cpu_cores,
        }


_guard: ResourceGuard | None = None


def get_resource_guard() -> ResourceGuard | None:
    """The guard started in this process, if any (background tasks look it up here)."""
    return _guard


async def wait_for_resources(timeout_s: float | None = None) -> bool:
    """For background work: wait while this process's guard holds it (at once when no guard runs)."""
    guard = _guard
    if guard is None:
        return True
    return await guard.wait_until_clear(timeout_s)


def start_resource_guard(settings: FleetSettings, *, service: str, interval_s: float = 2.0) -> ResourceGuard:
    """Start and register the guard of this process.

    One guard per process: a second service in the same process (the gateway runs the event
    processor in-process) shares the running one. A stopped guard is replaced, so an app built
    again with other settings (tests) gets its own limits.
    """
    global _guard
    if _guard is None or not _guard.running:
        _guard = ResourceGuard(ResourceLimits.from_settings(settings), service=service)
    return _guard.start(interval_s)
