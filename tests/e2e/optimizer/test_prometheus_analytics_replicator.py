"""The optimizer's PROMETHEUS_URL mode for analytics and the replicator, against a real Prometheus.

Prometheus scrapes a real analytics process and a real replicator every second (`job` =
"analytics" and "replicator", the names the optimizer queries). After a known burst of queries
and an upload, the optimizer's signals must agree with the services' own `/metrics`: every
PromQL expression selects the right series and yields what the raw counters say.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess
from tools.dev.prometheus import instant, prometheus_binary, scrape_metrics, start_prometheus

pytestmark = pytest.mark.e2e

TOKEN = "optimizer-prometheus-analytics-token"
WINDOW_S = 30.0  # the optimizer's PromQL window (see test_prometheus_signals.py)
QUERIES = 40
ROWS = 3_000
PRIME_ROWS = 10


def _csv(rows: int, person: str = "p") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["Timestamp", "Person ID", "Token ID", "Device name", "Access result", "facility_id"])
    for i in range(rows):
        writer.writerow(
            [f"2025-03-{1 + i % 28:02d}T{i % 24:02d}:00:{i % 60:02d}Z", f"{person}{i % 50}", f"b{i % 50}",
             f"door {i % 7}", "Denied" if i % 10 == 0 else "Granted", "f1"]
        )  # fmt: skip
    return out.getvalue().encode()


def _wait_replicated(replicator: ServiceProcess, rows: int) -> None:
    deadline = time.monotonic() + 15
    while httpx.get(replicator.url + "/status", timeout=5).json()["rows_replicated"] != rows:
        assert time.monotonic() < deadline, replicator.logs()
        time.sleep(0.2)


def test_optimizer_reads_analytics_and_replicator_signals_through_prometheus(
    database_url: str,
    replica_url: str,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
) -> None:
    binary = prometheus_binary()
    analytics = start_service(
        "services.analytics",
        {"DATABASE_URL": database_url, "CACHE_TYPE": "memory", "ADMIN_TOKEN": TOKEN},
        wait_ready=True,
    )
    replicator = start_service(
        "services.replicator",
        {
            "DATABASE_URL": database_url,
            "TIMESCALE_URL": replica_url,
            "REPLICATION_INTERVAL": "0.2",
            "ADMIN_TOKEN": TOKEN,
        },
        wait_ready=True,
    )
    # One request of each kind before Prometheus starts: the series exist (at their first
    # value) from the first scrape on, so the window's increase is exactly the burst below.
    # (A counter series born inside a PromQL window loses its first increment to rate().)
    httpx.get(analytics.url + "/api/v1/analytics/summary", timeout=30).raise_for_status()
    primed = httpx.post(
        analytics.url + "/api/v1/uploads",
        files={"file": ("prime.csv", _csv(PRIME_ROWS, person="prime-"), "text/csv")},
        timeout=30,
    )
    assert primed.status_code == 201, primed.text
    _wait_replicated(replicator, PRIME_ROWS)
    prom, prom_url = start_prometheus(
        binary, {"analytics": analytics.url, "replicator": replicator.url}, tmp_path
    )
    try:
        deadline = time.monotonic() + 30
        while not instant(prom_url, 'count_over_time(up{job="analytics"}[30s]) >= 12') or not instant(
            prom_url, 'count_over_time(up{job="replicator"}[30s]) >= 12'
        ):
            assert time.monotonic() < deadline, "prometheus never scraped both services"
            time.sleep(0.3)
        before = scrape_metrics(analytics.url)
        burst_started = time.monotonic()
        with httpx.Client(base_url=analytics.url, timeout=30) as http:
            for _ in range(QUERIES):  # one miss, then hits: the same view
                http.get("/api/v1/analytics/summary", params={"facility_id": "f1"}).raise_for_status()
            answer = http.post("/api/v1/uploads", files={"file": ("burst.csv", _csv(ROWS), "text/csv")})
            assert answer.status_code == 201, answer.text
            assert answer.json()["rows_inserted"] == ROWS
        _wait_replicated(replicator, PRIME_ROWS + ROWS)
        after = scrape_metrics(analytics.url)
        optimizer = start_service(
            "services.optimizer",
            {
                "ADMIN_TOKEN": TOKEN,
                "PROMETHEUS_URL": prom_url,
                "OPTIMIZER_ENABLED": "false",
                "ANALYTICS_URL": analytics.url,
                "REPLICATOR_URL": replicator.url,
                "OPTIMIZER_PROCESSOR_URL": f"http://127.0.0.1:{free_port()}",  # nothing there
                "OPTIMIZER_INTERVAL": "0.5",
            },
            wait_ready=True,
        )
        # Until Prometheus holds the final counters and the optimizer has read them.
        status: dict[str, Any] = {}
        services: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = httpx.get(optimizer.url + "/api/v1/optimizer/status", timeout=5).json()
            services = status["signals"]["services"]
            rows_rate = services.get("replicator", {}).get("rows_rate") or 0.0
            rows_uploaded = services.get("analytics", {}).get("upload_rows_rate") or 0.0
            if rows_rate * WINDOW_S >= 0.97 * ROWS and rows_uploaded * WINDOW_S >= 0.97 * ROWS:
                break
            time.sleep(0.3)
        read_after_s = time.monotonic() - burst_started
    finally:
        prom.terminate()
        prom.wait(timeout=20)

    assert read_after_s < WINDOW_S - 3, f"too slow ({read_after_s:.0f} s): the burst left the window"
    assert status["signal_source"] == "prometheus"
    assert "analytics" not in status["signals"]["errors"], status["signals"]["errors"]
    assert "replicator" not in status["signals"]["errors"], status["signals"]["errors"]
    assert 'no target with job="event_processor"' in status["signals"]["errors"]["event_processor"]
    a, r = services["analytics"], services["replicator"]

    # Requests: QUERIES summaries plus one upload, /metrics excluded; an extrapolated rate over
    # the window, so within PromQL's extrapolation of the burst.
    assert 0.97 * (QUERIES + 1) <= a["request_rate"] * WINDOW_S <= 1.25 * (QUERIES + 1), a
    assert 0.97 <= a["upload_rate"] * WINDOW_S <= 1.25, a
    assert a["uploads_in_progress"] == 0
    assert 0.97 * ROWS <= a["upload_rows_rate"] * WINDOW_S <= 1.25 * ROWS, a
    assert a["latency_p95_s"] is not None
    assert a["latency_p95_s"] > 0
    # The summary cache in the window: the raw counters' growth gives the same ratio.
    hits = (after.total("cache_hits_total", cache="summary") or 0.0) - (
        before.total("cache_hits_total", cache="summary") or 0.0
    )
    misses = (after.total("cache_misses_total", cache="summary") or 0.0) - (
        before.total("cache_misses_total", cache="summary") or 0.0
    )
    assert hits >= QUERIES - 1
    assert a["cache_hit_ratio:summary"] == pytest.approx(hits / (hits + misses), abs=0.02), a
    assert 0 < a["memory_ratio"] <= 1

    assert 0.97 * ROWS <= r["rows_rate"] * WINDOW_S <= 1.25 * ROWS, r
    assert r["backlog_seconds"] == 0  # caught up
    assert 0 < r["memory_ratio"] <= 1
