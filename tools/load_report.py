"""What the fleet made of a load run: processed count and event → stored latency, from three places.

- the processor's own `/metrics` (`--metrics-url`), scraped before, every second during and after
  the run: the deltas of `event_processor_events_processed_total` and of the
  `event_processor_latency_seconds` buckets give the count, the mean and p50/p95/p99 (estimated
  as PromQL's `histogram_quantile` does), and, second by second, the latency-over-time series;
- Prometheus (`--prometheus`), as the original design asked: `increase()` over the run's window;
- the database (`--database-url`), as a cross-check: the run's rows (`event_id LIKE
  'load-<run>-%'`) and the exact percentiles of `ingested_at - time`.

The HTML report draws the timeline as inline SVG: no scripts, no external assets.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from services.gateway.dashboard_data import (
    EVENT_LATENCY,
    Samples,
    counter_total,
    histogram_quantile,
    parse_metrics,
)

PROCESSED = "event_processor_events_processed"


@dataclass
class MetricsPoint:
    at: float
    processed: float
    buckets: dict[float, float]
    latency_sum: float
    latency_count: float


def _point(samples: Samples, at: float) -> MetricsPoint:
    buckets: dict[float, float] = {}
    for s in samples.get(EVENT_LATENCY + "_bucket", []):
        bound = float(s.labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + s.value
    return MetricsPoint(
        at=at,
        processed=counter_total(samples, PROCESSED),
        buckets=buckets,
        latency_sum=sum(s.value for s in samples.get(EVENT_LATENCY + "_sum", [])),
        latency_count=sum(s.value for s in samples.get(EVENT_LATENCY + "_count", [])),
    )


def between(before: MetricsPoint, after: MetricsPoint) -> dict[str, Any]:
    """Count, mean and p50/p95/p99 (seconds) of what was processed between two scrapes."""
    delta = {b: after.buckets.get(b, 0.0) - before.buckets.get(b, 0.0) for b in after.buckets}
    count = after.latency_count - before.latency_count
    out: dict[str, Any] = {
        "processed": after.processed - before.processed,
        "latency_count": count,
        "mean_s": (after.latency_sum - before.latency_sum) / count if count > 0 else None,
    }
    for q in (0.5, 0.95, 0.99):
        out[f"p{round(q * 100)}_s"] = histogram_quantile(q, delta.items()) if count > 0 else None
    return out


@dataclass
class MetricsWatcher:
    """Scrapes the processor's /metrics; keeps the first, the latest and a per-second timeline."""

    url: str
    client: httpx.AsyncClient
    first: MetricsPoint | None = None
    last: MetricsPoint | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    async def scrape(self) -> MetricsPoint | None:
        try:
            response = await self.client.get(self.url.rstrip("/") + "/metrics", timeout=5)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        point = _point(parse_metrics(response.text), time.time())
        if self.first is None:
            self.first = point
        elif self.last is not None:
            step = between(self.last, point)
            seconds = max(point.at - self.last.at, 1e-6)
            self.timeline.append(
                {
                    "t_s": round(point.at - self.first.at, 2),
                    "processed_per_s": round(step["processed"] / seconds, 2),
                    "p50_s": step["p50_s"],
                    "p95_s": step["p95_s"],
                    "mean_s": step["mean_s"],
                }
            )
        self.last = point
        return point

    def summary(self) -> dict[str, Any] | None:
        if self.first is None or self.last is None:
            return None
        return between(self.first, self.last)


async def prometheus_report(url: str, window_s: float, at: float) -> dict[str, Any]:
    """The run's figures as PromQL over `[window]` ending at `at` (Prometheus must have scraped)."""
    window = f"{max(1, math.ceil(window_s))}s"
    bucket = f"sum by (le) (increase({EVENT_LATENCY}_bucket[{window}]))"
    queries = {
        "processed": f"sum(increase({PROCESSED}_total[{window}]))",
        "mean_s": (
            f"sum(increase({EVENT_LATENCY}_sum[{window}])) / sum(increase({EVENT_LATENCY}_count[{window}]))"
        ),
        "p50_s": f"histogram_quantile(0.5, {bucket})",
        "p95_s": f"histogram_quantile(0.95, {bucket})",
        "p99_s": f"histogram_quantile(0.99, {bucket})",
    }
    out: dict[str, Any] = {"url": url, "window": window}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for key, expr in queries.items():
            body = (await client.get("/api/v1/query", params={"query": expr, "time": at})).json()
            result = body.get("data", {}).get("result", []) if body.get("status") == "success" else []
            value = float(result[0]["value"][1]) if result else None
            out[key] = value if value is None or math.isfinite(value) else None
    return out


async def database_report(dsn: str, run_prefix: str) -> dict[str, Any]:
    """Rows of this run and the exact percentiles of event → stored (`ingested_at - time`)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS n, avg(d) AS mean_s,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50_s,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY d) AS p95_s,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99_s
            FROM (
                SELECT extract(epoch FROM ingested_at - time)::float8 AS d
                FROM access_events WHERE event_id LIKE $1
            ) AS run
            """,
            run_prefix + "%",
            timeout=60,
        )
    finally:
        await conn.close()
    if row is None:  # an aggregate always returns one row; guard for the type checker
        raise RuntimeError("the database returned no aggregate row")
    return {
        "stored": int(row["n"]),
        **{k: (float(row[k]) if row[k] is not None else None) for k in ("mean_s", "p50_s", "p95_s", "p99_s")},
    }


def _polyline(points: list[tuple[float, float]], x_max: float, y_max: float, w: int, h: int) -> str:
    return " ".join(f"{40 + x / x_max * (w - 50):.1f},{h - 20 - y / y_max * (h - 30):.1f}" for x, y in points)


def html_report(report: dict[str, Any]) -> str:
    """A self-contained page: the verdict, the figures, and latency and throughput over time."""
    timeline: list[dict[str, Any]] = report.get("timeline") or []
    w, h = 760, 260
    x_max = max([p["t_s"] for p in timeline] + [1.0])
    lat = [(p["t_s"], p["p95_s"] * 1000) for p in timeline if p.get("p95_s") is not None]
    lat50 = [(p["t_s"], p["p50_s"] * 1000) for p in timeline if p.get("p50_s") is not None]
    rate = [(p["t_s"], p["processed_per_s"]) for p in timeline]
    y_lat = max([y for _, y in lat] + [1.0])
    y_rate = max([y for _, y in rate] + [1.0])

    def chart(
        title: str, series: list[tuple[str, str, list[tuple[float, float]]]], y_max: float, unit: str
    ) -> str:
        lines = "".join(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
            f'points="{_polyline(pts, x_max, y_max, w, h)}"><title>{html.escape(name)}</title></polyline>'
            for name, color, pts in series
            if pts
        )
        legend = " ".join(f'<tspan fill="{color}">■ {html.escape(name)}</tspan>' for name, color, _ in series)
        return (
            f"<figure><figcaption>{html.escape(title)}</figcaption>"
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
            f'aria-label="{html.escape(title)}">'
            f'<line x1="40" y1="{h - 20}" x2="{w - 10}" y2="{h - 20}" stroke="#999"/>'
            f'<line x1="40" y1="10" x2="40" y2="{h - 20}" stroke="#999"/>'
            f'<text x="2" y="16" font-size="11">{y_max:.3g} {unit}</text>'
            f'<text x="2" y="{h - 22}" font-size="11">0</text>'
            f'<text x="{w - 60}" y="{h - 4}" font-size="11">{x_max:.0f} s</text>'
            f'<text x="60" y="24" font-size="12">{legend}</text>{lines}</svg></figure>'
        )

    verdict = report["verdict"]
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in report["figures"].items()
    )
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Sentinel Fleet load test</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}"
        "th{text-align:left;padding-right:1em}.ok{color:#1a7f37}.missed{color:#cf222e}</style>"
        f"<h1>Load test: <span class={'ok' if verdict['met'] else 'missed'}>"
        f"{'target met' if verdict['met'] else 'target missed'}</span></h1>"
        f"<p>{html.escape('; '.join(verdict['reasons']) or 'every target met')}</p>"
        f"<table>{rows}</table>"
        + chart(
            "Event → stored latency over time (per second, processor histogram)",
            [("p50", "#0969da", lat50), ("p95", "#cf222e", lat)],
            y_lat,
            "ms",
        )
        + chart("Events stored per second", [("stored/s", "#1a7f37", rate)], y_rate, "/s")
        + "</html>\n"
    )


def verdict(
    processed: float | None, elapsed_s: float, mean_s: float | None, min_per_minute: float, max_mean_s: float
) -> dict[str, Any]:
    reasons: list[str] = []
    per_minute = processed / elapsed_s * 60 if processed is not None and elapsed_s > 0 else None
    if per_minute is None:
        reasons.append("no processed count: neither the processor's metrics nor Prometheus answered")
    elif per_minute < min_per_minute:
        reasons.append(f"{per_minute:.0f} events/min stored, target >= {min_per_minute:g}")
    if mean_s is None:
        reasons.append("no latency measured")
    elif mean_s >= max_mean_s:
        reasons.append(f"average event → stored latency {mean_s:.3f} s, target < {max_mean_s:g} s")
    return {
        "met": not reasons,
        "reasons": reasons,
        "events_per_minute": round(per_minute, 1) if per_minute is not None else None,
        "target_events_per_minute": min_per_minute,
        "mean_latency_s": mean_s,
        "target_mean_latency_s": max_mean_s,
    }
