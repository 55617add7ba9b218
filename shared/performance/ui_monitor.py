"""RealTimeUIMonitor: frame times and UI callback durations, bounded, forwarded to the PerformanceMonitor.

The original kept every frame time in an ever-growing list. Here the recent values live in ring
buffers (for "what is the page doing now") and everything since start goes into the shared
monitor's fixed-size histograms (`ui.frame_time`, `ui.callback.<name>`).
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from typing import Any

import numpy as np

from shared.performance.monitor import PerformanceMonitor, get_performance_monitor

RECENT_FRAMES = 1000
RECENT_CALLBACKS = 200
MAX_CALLBACK_NAMES = 100
JANK_FRAME_MS = 50.0  # below 20 frames per second the eye sees stutter
OVERFLOW_CALLBACK = "_other"
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def valid_callback_name(name: str) -> bool:
    return bool(_NAME.match(name))


def _describe(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=float)
    p50, p95 = np.percentile(arr, [50, 95])
    return {
        "count": len(values),
        "mean": float(arr.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(arr.max()),
    }


class RealTimeUIMonitor:
    def __init__(self, monitor: PerformanceMonitor | None = None) -> None:
        self._monitor = monitor or get_performance_monitor()
        self._lock = threading.Lock()
        self._frames: deque[float] = deque(maxlen=RECENT_FRAMES)
        self._callbacks: dict[str, deque[float]] = {}
        self.frames_total = 0
        self.callbacks_total = 0

    def record_frame_time(self, ms: float) -> None:
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"frame time must be a finite number >= 0, got {ms!r}")
        with self._lock:
            self._frames.append(ms)
            self.frames_total += 1
        self._monitor.record("ui.frame_time", ms / 1000.0)

    def record_callback_duration(self, name: str, seconds: float) -> str:
        """Returns the name the duration was filed under (`_other` once the name cap is reached)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"callback duration must be a finite number >= 0, got {seconds!r}")
        if not valid_callback_name(name):
            raise ValueError("callback name must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
        with self._lock:
            ring = self._callbacks.get(name)
            if ring is None:
                if len(self._callbacks) >= MAX_CALLBACK_NAMES:
                    name = OVERFLOW_CALLBACK
                    ring = self._callbacks.get(name)
                if ring is None:
                    ring = self._callbacks[name] = deque(maxlen=RECENT_CALLBACKS)
            ring.append(seconds)
            self.callbacks_total += 1
        self._monitor.record(f"ui.callback.{name}", seconds)
        return name

    def get_ui_metrics(self) -> dict[str, Any]:
        with self._lock:
            frames = list(self._frames)
            callbacks = {name: list(ring) for name, ring in self._callbacks.items()}
            frames_total, callbacks_total = self.frames_total, self.callbacks_total
        recent = _describe(frames)
        return {
            "frames": {
                "total": frames_total,
                "recent": recent,
                "fps_estimate": 1000.0 / recent["mean"] if recent["mean"] > 0 else 0.0,
                "jank_frames": sum(1 for f in frames if f > JANK_FRAME_MS),
            },
            "callbacks": {
                "total": callbacks_total,
                **{n: _describe(v) for n, v in sorted(callbacks.items())},
            },
        }

    def reset(self) -> None:
        with self._lock:
            self._frames.clear()
            self._callbacks.clear()
            self.frames_total = self.callbacks_total = 0


_ui_monitor: RealTimeUIMonitor | None = None
_lock = threading.Lock()


def get_ui_monitor() -> RealTimeUIMonitor:
    """The process's UI monitor, feeding the process's PerformanceMonitor."""
    global _ui_monitor
    if _ui_monitor is None:
        with _lock:
            if _ui_monitor is None:
                _ui_monitor = RealTimeUIMonitor()
    return _ui_monitor
