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
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from yarl import URL

from services.gateway.http_client import UpstreamStatusError, get_body, get_json
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


OPERATIONS_SHOWN = 10


def operation_rows(service: str, samples: Samples) -> list[dict[str, Any]]:
    """One row per timed operation (durations only) of one service's `performance_operation`."""
    by_op: dict[str, dict[str, Any]] = {}
    for s in samples.get("performance_operation", []):
        if s.labels.get("unit") != "seconds" or "quantile" not in s.labels:
            continue
        row = by_op.setdefault(
            s.labels["operation"], {"service": service, "operation": s.labels["operation"]}
        )
        row[{"0.5": "p50", "0.95": "p95", "0.99": "p99"}.get(s.labels["quantile"], "q")] = s.value
    for s in samples.get("performance_operation_count", []):
        if s.labels.get("operation") in by_op and s.labels.get("unit") == "seconds":
            by_op[s.labels["operation"]]["count"] = s.value
    return [r for r in by_op.values() if "p95" in r]


def counter_total(samples: Samples, name: str) -> float:
    return sum(s.value for s in samples.get(name + "_total", samples.get(name, [])))


def gauge_value(samples: Samples, name: str) -> float | None:
    values = [s.value for s in samples.get(name, [])]
    return values[0] if values else None


@dataclass
class DashboardState:
    """What the aggregator remembers between polls: each source's last processed count, to give
    the fleet's rate.

    Counts are kept per source (each processor replica), so the rate is the sum of each
    replica's own increase: a poll that reaches another replica than the last one, or a replica
    that restarted (its counter back to 0), no longer turns the difference of two unrelated
    counters into "0 events/s".
    """

    last: dict[str, float] = field(default_factory=dict)
    last_at: float | None = None
    events_per_second: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def rate(self, processed: float | dict[str, float]) -> float | None:
        counts = processed if isinstance(processed, dict) else {"": processed}
        now = time.monotonic()
        if self.last_at is not None and now - self.last_at < 0.5:
            return self.events_per_second  # polled again at once (two tabs): keep the last rate
        if self.last_at is not None:
            increase = 0.0
            for source, count in counts.items():
                before = self.last.get(source)
                if before is None:
                    continue  # first seen now: no interval to measure yet
                increase += count - before if count >= before else count  # a reset started from 0
            self.events_per_second = increase / (now - self.last_at)
        self.last, self.last_at = dict(counts), now
        return self.events_per_second


async def _section(fetch: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        data = await asyncio.wait_for(fetch(), SECTION_TIMEOUT_S)
    except TimeoutError:
        result: dict[str, Any] = {"ok": False, "error": f"no answer within {SECTION_TIMEOUT_S:g}s"}
    except UpstreamStatusError as exc:
        result = {"ok": False, "error": f"HTTP {exc.status_code} from {exc.path}"}
    except (aiohttp.ClientError, OSError) as exc:
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
        http: aiohttp.ClientSession,
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
        return await get_json(self.http, url, SECTION_TIMEOUT_S)

    async def _get_metrics(self, base_url: str) -> Samples:
        body = await get_body(self.http, base_url.rstrip("/") + "/metrics", SECTION_TIMEOUT_S)
        return parse_metrics(body.decode("utf-8", "replace"))

    async def _processor_replicas(self) -> dict[str, Samples]:
        """The /metrics of every replica behind EVENT_PROCESSOR_URL (a DNS name of a scaled
        service resolves to all of them); replicas that do not answer are left out."""
        url = URL(self.settings.event_processor_url)
        host = url.host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        hosts = sorted({str(info[4][0]) for info in infos}) or [host]
        bases = {h: str(url.with_host(h).with_path("/")).rstrip("/") for h in hosts}
        scraped = await asyncio.gather(
            *(self._get_metrics(b) for b in bases.values()), return_exceptions=True
        )
        replicas = {h: r for h, r in zip(bases, scraped, strict=True) if not isinstance(r, BaseException)}
        if not replicas:
            error = next(r for r in scraped if isinstance(r, BaseException))
            raise error
        return replicas

    async def _events(self) -> dict[str, Any]:
        if self.processor_in_process:
            replicas = {"gateway": parse_metrics(generate_latest(REGISTRY).decode())}
            source = "gateway"
        else:
            replicas = await self._processor_replicas()
            source = "event_processor"
        samples: Samples = {}
        for replica in replicas.values():  # sums of counters and buckets over the replicas
            for name, values in replica.items():
                samples.setdefault(name, []).extend(values)
        processed = counter_total(samples, "event_processor_events_processed")
        failed = {
            s.labels.get("reason", ""): s.value
            for s in samples.get("event_processor_events_failed_total", [])
        }
        per_replica = {h: counter_total(r, "event_processor_events_processed") for h, r in replicas.items()}
        async with self.state.lock:
            rate = self.state.rate(per_replica)
        return {
            "source": source,
            "replicas": len(replicas),
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

    async def _operations(self) -> dict[str, Any]:
        """The slowest timed operations of the whole fleet (PerformanceMonitor p95, since start)."""
        targets: dict[str, str | None] = {
            "gateway": None,
            "analytics": self.settings.analytics_url,
            "optimizer": self.settings.optimizer_url,
            "replicator": self.settings.replicator_url,
        }
        if not self.processor_in_process:
            targets["event_processor"] = self.settings.event_processor_url

        async def scrape(base: str | None) -> Samples:
            if base is None:
                return parse_metrics(generate_latest(REGISTRY).decode())
            return await self._get_metrics(base)

        names = list(targets)
        scraped = await asyncio.gather(*(scrape(targets[n]) for n in names), return_exceptions=True)
        rows: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for service, samples in zip(names, scraped, strict=True):
            if isinstance(samples, BaseException):
                errors[service] = f"{type(samples).__name__}: {samples}"[:200]
                continue
            rows.extend(operation_rows(service, samples))
        rows.sort(key=lambda r: r["p95"], reverse=True)
        return {"slowest": rows[:OPERATIONS_SHOWN], "operations": len(rows), "unreachable": errors}

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
            "operations": self._operations,
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
