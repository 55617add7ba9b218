"""Sliding windows of call outcomes: the last N calls, or the calls of the last N seconds.

Hand-written because no maintained Python library offers resilience4j's windows. Both keep
running totals so recording and reading are O(1) (the time window evicts whole one-second
buckets, as resilience4j's partial aggregations do).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowStats:
    calls: int
    failures: int
    slow: int

    def failure_rate(self) -> float:
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    def slow_rate(self) -> float:
        return 100.0 * self.slow / self.calls if self.calls else 0.0


class CountWindow:
    """Outcomes of the last `size` calls in a ring buffer."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._failed = bytearray(size)
        self._slow = bytearray(size)
        self._next = 0
        self._calls = 0
        self._failures = 0
        self._slow_calls = 0

    def record(self, failed: bool, slow: bool) -> WindowStats:
        i = self._next
        if self._calls == self._size:
            self._failures -= self._failed[i]
            self._slow_calls -= self._slow[i]
        else:
            self._calls += 1
        self._failed[i] = failed
        self._slow[i] = slow
        self._failures += failed
        self._slow_calls += slow
        self._next = (i + 1) % self._size
        return self.stats()

    def stats(self) -> WindowStats:
        return WindowStats(self._calls, self._failures, self._slow_calls)


class TimeWindow:
    """Outcomes of the calls of the last `seconds` seconds, in one bucket per second."""

    def __init__(self, seconds: int, clock: Callable[[], float]) -> None:
        self._seconds = seconds
        self._clock = clock
        self._calls = [0] * seconds
        self._failed = [0] * seconds
        self._slow = [0] * seconds
        self._totals = [0, 0, 0]
        self._last_second = -1

    def _advance(self) -> int:
        now = math.floor(self._clock())
        if now != self._last_second:
            # Clear every bucket whose second left the window since the last call.
            start = max(self._last_second + 1, now - self._seconds + 1)
            for second in range(start, now + 1):
                self._clear(second % self._seconds)
            self._last_second = now
        return now

    def _clear(self, i: int) -> None:
        self._totals[0] -= self._calls[i]
        self._totals[1] -= self._failed[i]
        self._totals[2] -= self._slow[i]
        self._calls[i] = self._failed[i] = self._slow[i] = 0

    def record(self, failed: bool, slow: bool) -> WindowStats:
        i = self._advance() % self._seconds
        self._calls[i] += 1
        self._failed[i] += failed
        self._slow[i] += slow
        self._totals[0] += 1
        self._totals[1] += failed
        self._totals[2] += slow
        return self.stats(advance=False)

    def stats(self, advance: bool = True) -> WindowStats:
        if advance:
            self._advance()
        return WindowStats(*self._totals)


Window = CountWindow | TimeWindow
