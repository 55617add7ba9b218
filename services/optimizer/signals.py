"""What the optimizer reads: each tuned service's metrics and the host's resources.

Two sources give the same signal names: direct scrapes of `/metrics` (rates and quantiles
between this scrape and the previous one), or, when PROMETHEUS_URL is set, PromQL over the
last window. Every signal is a plain float or None ("not measured in this window"); the
controller holds a knob whose signals are missing rather than guess.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from services.optimizer.scrape import Scrape, Window

log = logging.getLogger(__name__)

SignalMap = dict[str, float | None]

# Requests that are not user work: scraping, probes, tuning calls.
_INTERNAL_PREFIXES = ("/metrics", "/health", "/ready", "/admin", "/openapi", "/docs")
UPLOAD_HANDLER = "/api/v1/uploads"


@dataclass
class Signals:
    services: dict[str, SignalMap] = field(default_factory=dict)
    host: SignalMap = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def rounded(values: SignalMap) -> dict[str, float | None]:
            return {k: (round(v, 4) if v is not None else None) for k, v in values.items()}

        return {
            "services": {name: rounded(values) for name, values in self.services.items()},
            "host": rounded(self.host),
            "errors": dict(self.errors),
        }


def host_signals() -> SignalMap:
    """CPU busy share since the previous call (non-blocking), memory in use (both 0..1), and
    the cores this process may run on."""
    return {
        "cpu_ratio": psutil.cpu_percent(interval=None) / 100.0,
        "memory_ratio": psutil.virtual_memory().percent / 100.0,
        "cpu_cores": float(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        ),
    }


def analytics_signals(window: Window) -> SignalMap:
    handlers = window.after.label_values("http_requests_total", "handler")
    user = [h for h in handlers if not h.startswith(_INTERNAL_PREFIXES)]
    request_rate = sum(window.rate("http_requests_total", handler=h) or 0.0 for h in user)
    upload_rate = window.rate("http_requests_total", handler=UPLOAD_HANDLER) or 0.0
    errors = sum(
        window.rate("http_requests_total", handler=h, status=s) or 0.0
        for h in user
        for s in window.after.label_values("http_requests_total", "status")
        if s.startswith("5")
    )
    out: SignalMap = {
        "request_rate": request_rate,
        "query_rate": max(0.0, request_rate - upload_rate),
        "upload_rate": upload_rate,
        # An upload in progress shows here before its request completes (upload_rate counts
        # completed requests only).
        "uploads_in_progress": window.after.value("uploads_in_progress"),
        "upload_rows_rate": window.rate("upload_rows_total"),
        "error_rate": errors,
        "latency_p95_s": window.quantile("http_request_duration_highr_seconds", 0.95),
        "memory_ratio": window.after.value("resource_memory_ratio"),
    }
    for cache in sorted(window.after.label_values("cache_hits_total", "cache")):
        hits = window.increase("cache_hits_total", cache=cache) or 0.0
        misses = window.increase("cache_misses_total", cache=cache) or 0.0
        out[f"cache_lookup_rate:{cache}"] = (hits + misses) / window.seconds
        out[f"cache_hit_ratio:{cache}"] = hits / (hits + misses) if hits + misses else None
    return out


def processor_signals(window: Window) -> SignalMap:
    return {
        "events_rate": window.rate("event_processor_events_processed_total"),
        "batch_mean_records": window.mean("event_processor_batch_records"),
        "store_p95_s": window.quantile("event_processor_store_seconds", 0.95),
        "event_latency_p95_s": window.quantile("event_processor_latency_seconds", 0.95),
        "memory_ratio": window.after.value("resource_memory_ratio"),
    }


def replicator_signals(window: Window) -> SignalMap:
    return {
        "backlog_seconds": window.after.value("replication_backlog_seconds"),
        "rows_rate": window.rate("replication_rows_total"),
        "memory_ratio": window.after.value("resource_memory_ratio"),
    }


EXTRACTORS = {
    "analytics": analytics_signals,
    "event_processor": processor_signals,
    "replicator": replicator_signals,
}


class ScrapeReader:
    """Scrapes `<url>/metrics` of each target; signals cover the time since the last scrape."""

    def __init__(self, targets: dict[str, str], http: httpx.AsyncClient) -> None:
        self.targets = targets
        self.http = http
        self._previous: dict[str, Scrape] = {}

    async def _scrape(self, url: str) -> Scrape:
        response = await self.http.get(url.rstrip("/") + "/metrics")
        response.raise_for_status()
        return Scrape.parse(response.text)

    async def read(self) -> Signals:
        signals = Signals(host=host_signals())
        names = list(self.targets)
        results = await asyncio.gather(
            *(self._scrape(self.targets[n]) for n in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                signals.errors[name] = f"{type(result).__name__}: {result}"[:300]
                continue
            previous = self._previous.get(name)
            self._previous[name] = result
            if previous is None:
                signals.errors[name] = "first scrape: rates need a second one"
                continue
            signals.services[name] = EXTRACTORS[name](Window(previous, result))
        return signals


class PrometheusReader:
    """The same signals from the Prometheus HTTP API (`job` label = service name)."""

    def __init__(self, base_url: str, jobs: dict[str, str], http: httpx.AsyncClient, window_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.jobs = jobs
        self.http = http
        self.window = f"{max(15, round(window_s))}s"

    async def _query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        response = await self.http.get(f"{self.base_url}/api/v1/query", params={"query": expr})
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
        out = []
        for item in body["data"]["result"]:
            value = float(item["value"][1])
            out.append((item.get("metric", {}), value))
        return out

    async def _scalar(self, expr: str) -> float | None:
        result = await self._query(expr)
        if not result or result[0][1] != result[0][1]:  # empty or NaN
            return None
        return result[0][1]

    async def _analytics(self, job: str) -> SignalMap:
        w, sel = self.window, f'job="{job}"'
        user = f'{sel},handler!~"/metrics|/health|/ready|/admin.*|/openapi.*|/docs.*"'
        out: SignalMap = {
            "request_rate": await self._scalar(f"sum(rate(http_requests_total{{{user}}}[{w}]))"),
            "upload_rate": await self._scalar(
                f'sum(rate(http_requests_total{{{sel},handler="{UPLOAD_HANDLER}"}}[{w}]))'
            ),
            "uploads_in_progress": await self._scalar(f"sum(uploads_in_progress{{{sel}}})"),
            "upload_rows_rate": await self._scalar(f"sum(rate(upload_rows_total{{{sel}}}[{w}]))"),
            "error_rate": await self._scalar(f'sum(rate(http_requests_total{{{user},status=~"5.."}}[{w}]))'),
            "latency_p95_s": await self._scalar(
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(http_request_duration_highr_seconds_bucket{{{sel}}}[{w}])))"
            ),
            "memory_ratio": await self._scalar(f"max(resource_memory_ratio{{{sel}}})"),
        }
        out["query_rate"] = max(0.0, (out["request_rate"] or 0.0) - (out["upload_rate"] or 0.0))
        hits = dict(
            (m.get("cache", ""), v)
            for m, v in await self._query(f"sum by (cache) (increase(cache_hits_total{{{sel}}}[{w}]))")
        )
        misses = dict(
            (m.get("cache", ""), v)
            for m, v in await self._query(f"sum by (cache) (increase(cache_misses_total{{{sel}}}[{w}]))")
        )
        seconds = float(self.window.rstrip("s"))
        for cache in sorted(set(hits) | set(misses)):
            h, m = hits.get(cache, 0.0), misses.get(cache, 0.0)
            out[f"cache_lookup_rate:{cache}"] = (h + m) / seconds
            out[f"cache_hit_ratio:{cache}"] = h / (h + m) if h + m else None
        return out

    async def _processor(self, job: str) -> SignalMap:
        w, sel = self.window, f'job="{job}"'

        def q95(name: str) -> str:
            return f"histogram_quantile(0.95, sum by (le) (rate({name}_bucket{{{sel}}}[{w}])))"

        return {
            "events_rate": await self._scalar(
                f"sum(rate(event_processor_events_processed_total{{{sel}}}[{w}]))"
            ),
            "batch_mean_records": await self._scalar(
                f"sum(rate(event_processor_batch_records_sum{{{sel}}}[{w}])) / "
                f"sum(rate(event_processor_batch_records_count{{{sel}}}[{w}]))"
            ),
            "store_p95_s": await self._scalar(q95("event_processor_store_seconds")),
            "event_latency_p95_s": await self._scalar(q95("event_processor_latency_seconds")),
            "memory_ratio": await self._scalar(f"max(resource_memory_ratio{{{sel}}})"),
        }

    async def _replicator(self, job: str) -> SignalMap:
        w, sel = self.window, f'job="{job}"'
        return {
            "backlog_seconds": await self._scalar(f"max(replication_backlog_seconds{{{sel}}})"),
            "rows_rate": await self._scalar(f"sum(rate(replication_rows_total{{{sel}}}[{w}]))"),
            "memory_ratio": await self._scalar(f"max(resource_memory_ratio{{{sel}}})"),
        }

    async def read(self) -> Signals:
        signals = Signals(host=host_signals())
        readers = {
            "analytics": self._analytics,
            "event_processor": self._processor,
            "replicator": self._replicator,
        }
        for name, job in self.jobs.items():
            try:
                # As in scrape mode, a target Prometheus does not scrape is an error, not a service
                # whose signals are all absent: a wrong job label must show, and the controller
                # must hold that service's knobs.
                up = await self._scalar(f'max(up{{job="{job}"}})')
                if up is None:
                    signals.errors[name] = f'Prometheus has no target with job="{job}"'
                    continue
                if up < 1:
                    signals.errors[name] = f'Prometheus cannot scrape job="{job}" (up == 0)'
                    continue
                signals.services[name] = await readers[name](job)
            except Exception as exc:
                signals.errors[name] = f"{type(exc).__name__}: {exc}"[:300]
        return signals
