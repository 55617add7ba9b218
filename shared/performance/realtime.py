"""RealTimePerformanceTracker: browser vitals and server-side figures checked against thresholds.

Observations go to two places: the shared PerformanceMonitor (since-start statistics, /metrics)
and a short time window per metric, which the thresholds of `config/monitoring.yaml` are judged
on every `evaluation.interval_seconds`. Each threshold is a two-state machine (ok / failing):
one message when it starts failing, one when it recovers, nothing in between. While failing
with too few samples in the window the state is held rather than guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from prometheus_client import Counter, Gauge

from shared.performance.alerts import Alert, AlertDispatcher
from shared.performance.config import MonitoringConfig, ThresholdRule, load_monitoring_config
from shared.performance.monitor import PerformanceMonitor, ResourceSnapshot, get_performance_monitor
from shared.performance.ui_monitor import RealTimeUIMonitor, get_ui_monitor

log = logging.getLogger(__name__)

Rating = Literal["good", "needs-improvement", "poor"]
WebVital = Literal["LCP", "CLS", "INP", "FCP", "TTFB"]

# web.dev's published boundaries (good <= first, poor > second); CLS is unitless, the rest ms.
WEB_VITAL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "LCP": (2500.0, 4000.0),
    "INP": (200.0, 500.0),
    "CLS": (0.1, 0.25),
    "FCP": (1800.0, 3000.0),
    "TTFB": (800.0, 1800.0),
}

WINDOW_SAMPLES = 4096
MAX_METRICS = 64

# Metrics the tracker is fed directly (in their own units); every other threshold metric is
# the name of a PerformanceMonitor operation, judged on its durations in seconds.
TRACKER_FED_PREFIXES = ("web_vitals.", "ui.", "process.", "upload.rows_per_second")


def is_operation_metric(metric: str) -> bool:
    return not metric.startswith(TRACKER_FED_PREFIXES)


WEB_VITAL_RATINGS = Counter(
    "web_vitals_ratings_total", "Core Web Vitals reports by metric and rating", ["name", "rating"]
)
THRESHOLD_FAILING = Gauge(
    "performance_threshold_failing", "1 while a threshold of monitoring.yaml fails", ["metric", "statistic"]
)
THRESHOLD_VALUE = Gauge(
    "performance_threshold_value", "The judged statistic at the last evaluation", ["metric", "statistic"]
)


def rate_web_vital(name: str, value: float) -> Rating:
    """Rate as the web-vitals library does: above the poor boundary is poor, above good needs improvement."""
    good, poor = WEB_VITAL_THRESHOLDS[name]
    if value > poor:
        return "poor"
    if value > good:
        return "needs-improvement"
    return "good"


def _statistic(name: str, values: list[float]) -> float:
    if name == "last":
        return values[-1]
    if name == "mean":
        return float(np.mean(values))
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    return float(np.percentile(values, float(name[1:])))


@dataclass(slots=True)
class _RuleState:
    failing: bool = False
    notified: bool = False
    suppressed_reason: str | None = None
    since: str = ""
    value: float | None = None
    samples: int = 0


class RealTimePerformanceTracker:
    def __init__(
        self,
        config: MonitoringConfig | None = None,
        *,
        dispatcher: AlertDispatcher | None = None,
        monitor: PerformanceMonitor | None = None,
        ui_monitor: RealTimeUIMonitor | None = None,
        service: str = "fleet",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or MonitoringConfig()
        self.dispatcher = dispatcher or AlertDispatcher(self.config.alerts)
        self.monitor = monitor or get_performance_monitor()
        self.ui = ui_monitor or get_ui_monitor()
        self.service = service
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, deque[tuple[float, float]]] = {}
        self._states: dict[str, _RuleState] = {}
        self._last_resources: ResourceSnapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._eval_lock = asyncio.Lock()
        # Thresholds on operations see every observation the monitor records for them.
        self._watched = sorted(
            {r.metric for r in self.config.thresholds if r.enabled and is_operation_metric(r.metric)}
        )
        for metric in self._watched:
            self.monitor.watch(metric, functools.partial(self.observe, metric))

    def close(self) -> None:
        """Stop watching the monitor's operations (the monitor outlives a tracker in tests)."""
        for metric in self._watched:
            self.monitor.unwatch(metric)
        self._watched = []

    # -- intake -----------------------------------------------------------------------------

    def observe(self, metric: str, value: float) -> None:
        """Put one value into `metric`'s window (thresholds are judged on these windows)."""
        if not math.isfinite(value):
            raise ValueError(f"{metric}: value must be finite")
        with self._lock:
            window = self._windows.get(metric)
            if window is None:
                if len(self._windows) >= MAX_METRICS:
                    log.warning("tracker: metric cap reached, %r not tracked", metric)
                    return
                window = self._windows[metric] = deque(maxlen=WINDOW_SAMPLES)
            window.append((self._clock(), value))

    def record_web_vital(self, name: str, value: float) -> Rating:
        if name not in WEB_VITAL_THRESHOLDS:
            raise ValueError(f"unknown web vital {name!r}; expected one of {sorted(WEB_VITAL_THRESHOLDS)}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: value must be a finite number >= 0")
        rating = rate_web_vital(name, value)
        WEB_VITAL_RATINGS.labels(name, rating).inc()
        if name == "CLS":
            self.monitor.record("web_vitals.CLS", value, unit="score")
        else:
            self.monitor.record(f"web_vitals.{name}", value / 1000.0)
        self.observe(f"web_vitals.{name}", value)
        return rating

    def record_frame_time(self, ms: float) -> None:
        self.ui.record_frame_time(ms)
        self.observe("ui.frame_time_ms", ms)

    def record_callback_duration(self, name: str, seconds: float) -> str:
        filed = self.ui.record_callback_duration(name, seconds)
        self.observe("ui.callback_duration_s", seconds)
        return filed

    def record_upload_speed(self, rows_per_second: float) -> None:
        self.monitor.record("upload.rows_per_second", rows_per_second, unit="per_second")
        self.observe("upload.rows_per_second", rows_per_second)

    # -- evaluation -------------------------------------------------------------------------

    def _observe_resources(self) -> None:
        latest = self.monitor.latest_resources()
        if latest is None or latest is self._last_resources:
            return
        self._last_resources = latest
        self.observe("process.rss_mb", latest.rss_bytes / (1024 * 1024))
        self.observe("process.cpu_percent", latest.cpu_percent)

    def _window_values(self, rule: ThresholdRule, now: float) -> list[float]:
        with self._lock:
            window = self._windows.get(rule.metric)
            if not window:
                return []
            horizon = now - rule.window_seconds
            while window and window[0][0] < horizon - 3600:
                window.popleft()  # far outside every window: drop so stale values do not pile up
            return [v for t, v in window if t >= horizon]

    async def evaluate(self) -> list[Alert]:
        """Judge every enabled threshold now; returns the alerts sent (or attempted)."""
        async with self._eval_lock:
            self._observe_resources()
            now = self._clock()
            sent: list[Alert] = []
            for rule in self.config.thresholds:
                if not rule.enabled:
                    continue
                alert = await self._judge(rule, now)
                if alert is not None:
                    sent.append(alert)
            return sent

    async def _judge(self, rule: ThresholdRule, now: float) -> Alert | None:
        state = self._states.setdefault(rule.key, _RuleState())
        values = self._window_values(rule, now)
        state.samples = len(values)
        if len(values) < rule.min_samples:
            return None
        value = _statistic(rule.statistic, values)
        state.value = value
        THRESHOLD_VALUE.labels(rule.metric, rule.statistic).set(value)
        breached = rule.breached(value)
        THRESHOLD_FAILING.labels(rule.metric, rule.statistic).set(1 if breached else 0)
        if breached:
            if not state.failing:
                state.failing, state.notified = True, False
                state.since = datetime.now(UTC).isoformat()
            if state.notified:
                return None  # de-duplicated: already told
            reason = self.dispatcher.may_fire(rule.key)
            if reason is not None:
                if reason != state.suppressed_reason:
                    self.dispatcher.suppressed(reason)
                state.suppressed_reason = reason
                return None
            state.notified, state.suppressed_reason = True, None
            return await self.dispatcher.dispatch(
                self._alert(rule, "firing", value, len(values), state.since)
            )
        if not state.failing:
            return None
        state.failing = False
        if not state.notified:
            return None  # nobody was told it failed, so nobody needs to hear it recovered
        state.notified = False
        return await self.dispatcher.dispatch(self._alert(rule, "resolved", value, len(values), state.since))

    def _alert(
        self,
        rule: ThresholdRule,
        status: Literal["firing", "resolved"],
        value: float,
        samples: int,
        since: str,
    ) -> Alert:
        return Alert(
            key=rule.key,
            metric=rule.metric,
            status=status,
            severity=rule.severity,
            statistic=rule.statistic,
            value=value,
            threshold=rule.limit,
            comparison=">" if rule.max is not None else "<",
            window_seconds=rule.window_seconds,
            samples=samples,
            unit=rule.unit,
            description=rule.description,
            service=self.service,
            host=self.dispatcher.hostname,
            since=since,
        )

    # -- reading ----------------------------------------------------------------------------

    def thresholds_state(self) -> list[dict[str, Any]]:
        out = []
        for rule in self.config.thresholds:
            st = self._states.get(rule.key, _RuleState())
            out.append(
                {
                    "metric": rule.metric,
                    "statistic": rule.statistic,
                    "comparison": ">" if rule.max is not None else "<",
                    "threshold": rule.limit,
                    "unit": rule.unit,
                    "enabled": rule.enabled,
                    "failing": st.failing,
                    "notified": st.notified,
                    "value": st.value,
                    "samples": st.samples,
                    "since": st.since or None,
                }
            )
        return out

    def vitals_summary(self, window_seconds: float = 300.0) -> dict[str, Any]:
        """p75 of each vital over the window, rated; what the performance page shows about itself."""
        now = self._clock()
        out: dict[str, Any] = {}
        for name in WEB_VITAL_THRESHOLDS:
            with self._lock:
                window = self._windows.get(f"web_vitals.{name}")
                values = [v for t, v in window or () if t >= now - window_seconds]
            if values:
                p75 = float(np.percentile(values, 75))
                out[name] = {"p75": p75, "rating": rate_web_vital(name, p75), "samples": len(values)}
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="threshold-evaluation")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.evaluation.interval_seconds)
            try:
                await self.evaluate()
            except Exception:
                log.exception("threshold evaluation failed")


_tracker: RealTimePerformanceTracker | None = None


def set_realtime_tracker(tracker: RealTimePerformanceTracker | None) -> None:
    """Make `tracker` the one `get_realtime_tracker()` returns (the analytics service does on start)."""
    global _tracker
    _tracker = tracker


def get_realtime_tracker() -> RealTimePerformanceTracker:
    """The process's tracker; built from MONITORING_CONFIG on first use when none was set."""
    global _tracker
    if _tracker is None:
        from shared.settings import get_fleet_settings

        config = load_monitoring_config(get_fleet_settings().monitoring_config)
        _tracker = RealTimePerformanceTracker(config, service=socket.gethostname())
    return _tracker
