"""The live performance page's data: one JSON document gathered from the fleet's own APIs.

Each section is fetched independently with a short timeout and reports `{"ok": false, "error"}`
on its own when its source is down, so the page degrades per section instead of failing whole.
Prometheus text is parsed with prometheus_client's parser; quantiles are estimated from
histogram buckets the way PromQL's `histogram_quantile` does.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shared.settings import FleetSettings

SECTION_TIMEOUT_S = 2.0
QUANTILES = (0.5, 0.95, 0.99)
HTTP_LATENCY = "http_request_duration_highr_seconds"
EVENT_LATENCY = "event_processor_latency_seconds"

Samples = dict[str, list[Sample]]


def parse_metrics(text: str) -> Samples:
    """Samples by sample name (`x_bucket`, `x_count`, `x_total`...)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL's estimate: linear interpolation inside the bucket holding the q-th observation.
    `buckets` are (upper bound, cumulative count), the last one +Inf; None when empty."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound  # beyond the last finite bucket: its bound is the best estimate
            if count == lower_count:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper, count
    return ordered[-1][0]


def histogram_summary(samples: Samples, name: str) -> dict[str, Any]:
    """Count, mean and p50/p95/p99 of histogram `name`, summed over all its label sets."""
    by_bound: dict[float, float] = {}
    for s in samples.get(name + "_bucket", []):
        bound = float(s.labels["le"])
        by_bound[bound] = by_bound.get(bound, 0.0) + s.value
    count = sum(s.value for s in samples.get(name + "_count", []))
    total = sum(s.value for s in samples.get(name + "_sum", []))
    out: dict[str, Any] = {"count": count, "mean": total / count if count else None}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = histogram_quantile(q, by_bound.items())
    return out


def counter_total(samples: Samples, name: str) -> float:
    return sum(s.value for s in samples.get(name + "_total", samples.get(name, [])))


def gauge_value(samples: Samples, name: str) -> float | None:
    values = [s.value for s in samples.get(name, [])]
    return values[0] if values else None


@dataclass
class DashboardState:
    """What the aggregator remembers between polls: the last processed count, to give a rate."""

    last_processed: tuple[float, float] | None = None
    events_per_second: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def rate(self, processed: float) -> float | None:
        now = time.monotonic()
        if self.last_processed is not None:
            then, before = self.last_processed
            if now - then >= 0.5:
                self.events_per_second = max(processed - before, 0.0) / (now - then)
                self.last_processed = (now, processed)
        else:
            self.last_processed = (now, processed)
        return self.events_per_second


async def _section(fetch: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        data = await asyncio.wait_for(fetch(), SECTION_TIMEOUT_S)
    except TimeoutError:
        result: dict[str, Any] = {"ok": False, "error": f"no answer within {SECTION_TIMEOUT_S:g}s"}
    except httpx.HTTPStatusError as exc:
        result = {"ok": False, "error": f"HTTP {exc.response.status_code} from {exc.request.url.path}"}
    except (httpx.HTTPError, OSError) as exc:
        result = {"ok": False, "error": f"unreachable: {type(exc).__name__}"}
    except (ValueError, KeyError) as exc:
        result = {"ok": False, "error": f"unexpected answer: {exc}"}
    else:
        result = {"ok": True, "data": data}
    result["fetched_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


class DashboardSources:
    """Where each section comes from: this process for the gateway's own figures, HTTP for the rest."""

    def __init__(
        self,
        settings: FleetSettings,
        http: httpx.AsyncClient,
        breakers: Callable[[], dict[str, Any]],
        http_registry: CollectorRegistry | None,
        processor_in_process: bool,
        state: DashboardState,
    ) -> None:
        self.settings = settings
        self.http = http
        self.breakers = breakers
        self.http_registry = http_registry
        self.processor_in_process = processor_in_process
        self.state = state

    async def _get_json(self, url: str) -> Any:
        response = await self.http.get(url, timeout=SECTION_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    async def _get_metrics(self, base_url: str) -> Samples:
        response = await self.http.get(base_url.rstrip("/") + "/metrics", timeout=SECTION_TIMEOUT_S)
        response.raise_for_status()
        return parse_metrics(response.text)

    async def _events(self) -> dict[str, Any]:
        if self.processor_in_process:
            samples = parse_metrics(generate_latest(REGISTRY).decode())
            source = "gateway"
        else:
            samples = await self._get_metrics(self.settings.event_processor_url)
            source = "event_processor"
        processed = counter_total(samples, "event_processor_events_processed")
        failed = {
            s.labels.get("reason", ""): s.value
            for s in samples.get("event_processor_events_failed_total", [])
        }
        async with self.state.lock:
            rate = self.state.rate(processed)
        return {
            "source": source,
            "processed_total": processed,
            "failed_total": sum(failed.values()),
            "failed_by_reason": failed,
            "events_per_second": rate,
            "latency_seconds": histogram_summary(samples, EVENT_LATENCY),
        }

    async def _service_latency(self, name: str, base_url: str | None) -> dict[str, Any]:
        if base_url is None:
            assert self.http_registry is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
            samples = parse_metrics(generate_latest(self.http_registry).decode())
        else:
            samples = await self._get_metrics(base_url)
        summary = histogram_summary(samples, HTTP_LATENCY)
        requests = samples.get("http_requests_total", [])
        errors = sum(s.value for s in requests if s.labels.get("status", "").startswith("5"))
        summary["requests"] = sum(s.value for s in requests)
        summary["server_errors"] = errors
        return summary

    async def _requests(self) -> dict[str, Any]:
        targets: dict[str, str | None] = {
            "gateway": None if self.http_registry is not None else self.settings.gateway_url,
            "analytics": self.settings.analytics_url,
            "optimizer": self.settings.optimizer_url,
            "replicator": self.settings.replicator_url,
        }
        names = list(targets)
        results = await asyncio.gather(
            *(_section(functools.partial(self._service_latency, n, targets[n])) for n in names)
        )
        return dict(zip(names, results, strict=True))

    async def _cache(self) -> dict[str, Any]:
        report = await self._get_json(self.settings.analytics_url.rstrip("/") + "/api/v1/cache/report")
        return {"report": report, "hit_ratio_by_tier": cache_hit_ratios(report)}

    async def _replication(self) -> dict[str, Any]:
        base = self.settings.replicator_url.rstrip("/")
        status, samples = await asyncio.gather(self._get_json(base + "/status"), self._get_metrics(base))
        return {
            "status": status,
            "lag_seconds": gauge_value(samples, "replication_lag_seconds"),
            "backlog_seconds": gauge_value(samples, "replication_backlog_seconds"),
            "rows_total": counter_total(samples, "replication_rows"),
        }

    async def _optimizer(self) -> Any:
        return await self._get_json(self.settings.optimizer_url.rstrip("/") + "/api/v1/optimizer/status")

    async def _alerts(self) -> Any:
        base = self.settings.analytics_url.rstrip("/") + "/api/v1/performance"
        alerts, vitals = await asyncio.gather(
            self._get_json(base + "/alerts?limit=20"), self._get_json(base + "/vitals")
        )
        return {**alerts, "vitals": vitals}

    async def _breakers(self) -> dict[str, Any]:
        return self.breakers()

    async def collect(self) -> dict[str, Any]:
        sections: dict[str, Callable[[], Awaitable[Any]]] = {
            "breakers": self._breakers,
            "events": self._events,
            "cache": self._cache,
            "replication": self._replication,
            "optimizer": self._optimizer,
            "alerts": self._alerts,
        }
        names = list(sections)
        results, requests = await asyncio.gather(
            asyncio.gather(*(_section(sections[n]) for n in names)), self._requests()
        )
        body: dict[str, Any] = dict(zip(names, results, strict=True))
        body["requests"] = {"ok": True, "data": requests}
        body["generated_at"] = time.time()
        return body


def cache_hit_ratios(report: Any) -> dict[str, float | None]:
    """hits / (hits + misses) per tier from `GET /api/v1/cache/report`, whichever of its shapes:
    tiers at the top level (`{"l1": {...}}`), under `"tiers"`, or per cache then per tier."""
    tiers = report.get("tiers") if isinstance(report, dict) else None
    if isinstance(tiers, dict):
        out: dict[str, float | None] = {}
        for name, t in sorted(tiers.items()):
            if (
                isinstance(t, dict)
                and isinstance(t.get("hits"), int | float)
                and isinstance(t.get("misses"), int | float)
            ):
                seen = t["hits"] + t["misses"]
                out[name] = t["hits"] / seen if seen else None
        return out
    totals: dict[str, list[float]] = {}

    def visit(node: Any, tier: str | None) -> None:
        if not isinstance(node, dict):
            return
        if (
            tier is not None
            and isinstance(node.get("hits"), int | float)
            and isinstance(node.get("misses"), int | float)
        ):
            acc = totals.setdefault(tier, [0.0, 0.0])
            acc[0] += float(node["hits"])
            acc[1] += float(node["misses"])
            return
        for key, child in node.items():
            visit(child, key if key in {"l1", "l2", "l3"} else tier)

    visit(report, None)
    return {tier: (h / (h + m) if h + m else None) for tier, (h, m) in sorted(totals.items())}
