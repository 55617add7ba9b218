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


class Series:
    """Not thread-safe by itself; the monitor serialises access with its lock."""

    __slots__ = ("_hist", "_max", "_min", "_scale", "count", "total", "unit")

    def __init__(self, unit: str = "seconds") -> None:
        if unit not in UNIT_SCALE:
            raise ValueError(f"unknown unit {unit!r}; expected one of {sorted(UNIT_SCALE)}")
        self.unit = unit
        self._scale = UNIT_SCALE[unit]
        self._hist = HdrHistogram(1, _HIGHEST_TRACKABLE, _SIGNIFICANT_DIGITS)
        self.count = 0
        self.total = 0.0
        self._min = math.inf
        self._max = -math.inf

    def record(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"observation must be a finite number >= 0, got {value!r}")
        self.count += 1
        self.total += value
        self._min = min(self._min, value)
        self._max = max(self._max, value)
        # Clamp into the trackable range: 0 becomes the smallest bucket, huge values the largest.
        scaled = min(max(round(value * self._scale), 1), _HIGHEST_TRACKABLE)
        self._hist.record_value(scaled)

    def reset(self) -> None:
        self._hist.reset()
        self.count = 0
        self.total = 0.0
        self._min = math.inf
        self._max = -math.inf

    def stats(self) -> SeriesStats:
        if self.count == 0:
            return SeriesStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.unit)
        by_q = self._hist.get_percentile_to_value_dict(list(QUANTILES))

        # HDR buckets report the bucket's upper edge; clamp into the exact observed range.
        def q(p: float) -> float:
            return float(min(max(by_q[p] / self._scale, self._min), self._max))

        return SeriesStats(
            count=self.count,
            mean=self.total / self.count,
            min=self._min,
            max=self._max,
            p50=q(50.0),
            p95=q(95.0),
            p99=q(99.0),
            unit=self.unit,
        )
