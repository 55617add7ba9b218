"""One named series of observations: exact count/sum/min/max plus an HDR histogram for quantiles.

The HDR histogram has a fixed size chosen at creation (a few tens of KiB), so memory does not
grow with the number of observations however long the process runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

# Two significant digits: quantiles within 1 %, at ~35 KiB per histogram over the whole range.
_SIGNIFICANT_DIGITS = 2
_HIGHEST_TRACKABLE = 10**12
QUANTILES = (50.0, 95.0, 99.0)

# Values are stored as integers: a unit's scale turns 1.234 s into 1_234_000 µs.
UNIT_SCALE = {"seconds": 1_000_000, "score": 1_000_000, "per_second": 1_000}


@dataclass(frozen=True, slots=True)
class SeriesStats:
    count: int
    mean: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float
    unit: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "unit": self.unit,
        }


class _Window:
    """Exact count/sum/min/max of a span of observations."""

    __slots__ = ("count", "max", "min", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def merge(self, other: _Window) -> None:
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)


class Series:
    """Observations of one operation since start and since the last snapshot.

    New values go into the current interval's histogram only (one HDR update per observation);
    closing an interval folds it into the since-start histogram, which is a cheap array add.
    Not thread-safe by itself; the monitor serialises access with its lock.
    """

    __slots__ = ("_interval", "_interval_hist", "_scale", "_total", "_total_hist", "unit")

    def __init__(self, unit: str = "seconds") -> None:
        if unit not in UNIT_SCALE:
            raise ValueError(f"unknown unit {unit!r}; expected one of {sorted(UNIT_SCALE)}")
        self.unit = unit
        self._scale = UNIT_SCALE[unit]
        self._total_hist = HdrHistogram(1, _HIGHEST_TRACKABLE, _SIGNIFICANT_DIGITS)
        self._interval_hist = HdrHistogram(1, _HIGHEST_TRACKABLE, _SIGNIFICANT_DIGITS)
        self._total = _Window()
        self._interval = _Window()

    @property
    def count(self) -> int:
        return self._total.count + self._interval.count

    def record(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"observation must be a finite number >= 0, got {value!r}")
        # Clamp into the trackable range: 0 becomes the smallest bucket, huge values the largest
        # (scaled before anything is counted: a value whose scaled form overflows to infinity
        # must not leave the window counted but the histogram without it).
        scaled_f = value * self._scale
        scaled = _HIGHEST_TRACKABLE if scaled_f >= _HIGHEST_TRACKABLE else max(1, round(scaled_f))
        w = self._interval
        w.count += 1
        w.total += value
        if value < w.min:
            w.min = value
        if value > w.max:
            w.max = value
        self._interval_hist.record_value(scaled)

    def close_interval(self) -> SeriesStats | None:
        """Statistics of the interval just ended (None when nothing ran), folded into the total."""
        if self._interval.count == 0:
            return None
        stats = self._stats(self._interval, self._interval_hist)
        self._total.merge(self._interval)
        self._total_hist.add(self._interval_hist)
        self._interval_hist.reset()
        self._interval = _Window()
        return stats

    def stats(self) -> SeriesStats:
        """Since start, the open interval included."""
        if self._interval.count == 0:
            return self._stats(self._total, self._total_hist)
        window = _Window()
        window.merge(self._total)
        window.merge(self._interval)
        merged = HdrHistogram(1, _HIGHEST_TRACKABLE, _SIGNIFICANT_DIGITS)
        merged.add(self._total_hist)
        merged.add(self._interval_hist)
        return self._stats(window, merged)

    def _stats(self, w: _Window, hist: HdrHistogram) -> SeriesStats:
        if w.count == 0:
            return SeriesStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.unit)
        by_q = hist.get_percentile_to_value_dict(list(QUANTILES))

        # HDR buckets report the bucket's upper edge; clamp into the exact observed range.
        def q(p: float) -> float:
            return float(min(max(by_q[p] / self._scale, w.min), w.max))

        return SeriesStats(
            count=w.count,
            mean=w.total / w.count,
            min=w.min,
            max=w.max,
            p50=q(50.0),
            p95=q(95.0),
            p99=q(99.0),
            unit=self.unit,
        )
