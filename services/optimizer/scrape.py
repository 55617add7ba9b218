"""Prometheus text scrapes and the rates and quantiles between two of them.

Parsing is prometheus_client's own parser. The window arithmetic (rate of a counter,
quantile of a histogram from the growth of its buckets) is the same as PromQL's `rate()` and
`histogram_quantile()` with linear interpolation inside a bucket; it is a few lines here
because the optimizer must work without a Prometheus server, from two direct scrapes.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float | None = None) -> Scrape:
        samples: dict[str, dict[Labels, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name][tuple(sorted(sample.labels.items()))] = float(sample.value)
        return cls(at=time.monotonic() if at is None else at, samples=dict(samples))

    def total(self, name: str, **match: str) -> float | None:
        series = self.samples.get(name)
        if series is None:
            return None
        return sum(v for labels, v in series.items() if _matches(labels, match))

    def value(self, name: str, **match: str) -> float | None:
        """A gauge's value (the largest when several series match)."""
        series = self.samples.get(name)
        if not series:
            return None
        values = [v for labels, v in series.items() if _matches(labels, match)]
        return max(values) if values else None

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for labels in self.samples.get(name, {}) if label in dict(labels)}

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        out: dict[float, float] = defaultdict(float)
        for labels, value in self.samples.get(f"{name}_bucket", {}).items():
            as_dict = dict(labels)
            if _matches(labels, match):
                out[float(as_dict["le"])] += value
        return dict(out)


def _matches(labels: Labels, match: dict[str, str]) -> bool:
    if not match:
        return True
    as_dict = dict(labels)
    return all(as_dict.get(k) == v for k, v in match.items())


@dataclass(frozen=True)
class Window:
    """Two scrapes of one target; every method answers for the time between them."""

    before: Scrape
    after: Scrape

    @property
    def seconds(self) -> float:
        return max(1e-6, self.after.at - self.before.at)

    def increase(self, name: str, **match: str) -> float | None:
        now, then = self.after.total(name, **match), self.before.total(name, **match)
        if now is None:
            return None
        then = then or 0.0
        # A restart resets counters: count from zero, as PromQL's rate() does.
        return now - then if now >= then else now

    def rate(self, name: str, **match: str) -> float | None:
        inc = self.increase(name, **match)
        return None if inc is None else inc / self.seconds

    def mean(self, histogram: str, **match: str) -> float | None:
        count = self.increase(f"{histogram}_count", **match)
        total = self.increase(f"{histogram}_sum", **match)
        if not count or total is None:
            return None
        return total / count

    def quantile(self, histogram: str, q: float, **match: str) -> float | None:
        after, before = self.after.buckets(histogram, **match), self.before.buckets(histogram, **match)
        if not after:
            return None
        grown = sorted((le, max(0.0, after[le] - before.get(le, 0.0))) for le in after)
        return bucket_quantile(q, grown)


def bucket_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """PromQL histogram_quantile over cumulative (upper bound, count) pairs, sorted by bound."""
    if not cumulative:
        return None
    total = cumulative[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound  # the quantile is past the last finite bucket
            if count == lower_count:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper, count
    return lower_bound
