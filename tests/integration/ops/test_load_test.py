"""`python -m tools.load_test` against a real gateway: the events it reports accepted are stored.

Real processes end to end: the load generator posts to a gateway process, the gateway publishes
to the broker, its event processor writes PostgreSQL, and the test counts the rows.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.settings import REPO_ROOT
from tools.dev.fleet import ServiceProcess, service_env
from tools.dev.prometheus import instant, prometheus_binary, start_prometheus

pytestmark = pytest.mark.e2e


def _gateway(
    database_url: str, kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> ServiceProcess:
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
        # The breaker's analytics proxy is not under test; nothing listens there.
        "ANALYTICS_URL": "http://127.0.0.1:9",
    }
    return start_service("services.gateway", env, wait_ready=True)


def _run_load_test(*args: str, timeout_s: float = 60) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.load_test", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"no JSON summary (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from None
    return proc.returncode, summary, proc.stderr


async def _stored(database_url: str, like: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await conn.fetch(
            "SELECT event_id, time, badge_id, access_result, facility_id FROM access_events"
            " WHERE event_id LIKE $1",
            like,
        )
    finally:
        await conn.close()


def _wait_for_rows(
    database_url: str, like: str, expected: int, timeout_s: float = 20.0
) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout_s
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = asyncio.run(_stored(database_url, like))
        if len(rows) >= expected:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"{len(rows)} of {expected} events stored after {timeout_s}s")


def test_load_run_reports_what_the_fleet_stored(
    database_url: str, kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> None:
    gateway = _gateway(database_url, kafka_bootstrap, topic_name, start_service)
    before = datetime.now(UTC)

    code, summary, stderr = _run_load_test(
        "--via",
        "http",
        "--target",
        gateway.url,
        "--rate",
        "100",
        "--duration",
        "2",
        "--concurrency",
        "4",
        "--seed",
        "11",
    )

    assert code == 0, (summary, stderr, gateway.logs())
    # Bounded by count: rate x duration events, every one answered 202 and acknowledged.
    assert summary["sent"] == 200
    assert summary["requests"] == 200
    assert summary["accepted"] == 200
    assert summary["responses_by_status"] == {"202": 200}
    assert summary["errors"] == {}
    assert summary["failed_requests"] == 0
    assert 1.9 <= summary["elapsed_s"] < 10
    assert 20 <= summary["achieved_rate"] <= 110
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert summary["target"] == gateway.url + "/api/v1/events"

    rows = _wait_for_rows(database_url, "load-%", 200)
    assert len(rows) == 200  # each event stored once
    assert all(row["badge_id"] and row["facility_id"] for row in rows)
    assert {row["access_result"] for row in rows} <= {"Granted", "Denied", "Timeout", "Error"}
    # Timestamps are "now": the events are live traffic, not a replay of old data.
    assert all(before - timedelta(seconds=5) <= row["time"] <= datetime.now(UTC) for row in rows)


def test_original_message_shape_in_batches_is_stored(
    database_url: str, kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> None:
    gateway = _gateway(database_url, kafka_bootstrap, topic_name, start_service)
    before = datetime.now(UTC)

    code, summary, stderr = _run_load_test(
        "--via",
        "http",
        "--min-per-minute",
        "0",
        "--target",
        gateway.url,
        "--shape",
        "original",
        "--rate",
        "60",
        "--duration",
        "1.5",
        "--batch-size",
        "10",
        "--concurrency",
        "2",
    )

    assert code == 0, (summary, stderr, gateway.logs())
    assert summary["sent"] == 90
    assert summary["requests"] == 9
    assert summary["accepted"] == 90
    rows = _wait_for_rows(database_url, "load-%", 90)
    assert len(rows) == 90
    # The five-field message: no badge, no facility; the naive timestamp was read as UTC.
    assert all(row["badge_id"] is None and row["facility_id"] is None for row in rows)
    assert all(before - timedelta(seconds=5) <= row["time"] <= datetime.now(UTC) for row in rows)


def test_unreachable_gateway_is_reported_and_fails_the_run() -> None:
    from tools.dev.embedded import free_port

    port = free_port()  # nothing listens there
    code, summary, _ = _run_load_test(
        "--via",
        "http",
        "--target",
        f"http://127.0.0.1:{port}",
        "--rate",
        "20",
        "--duration",
        "0.5",
        "--timeout",
        "2",
    )
    assert code == 1
    assert summary["sent"] == 10
    assert summary["accepted"] == 0
    assert summary["failed_requests"] == 10
    assert summary["errors"] == {"ConnectError": 10}


def test_kafka_run_reports_processing_from_metrics_and_database_and_writes_reports(
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    gateway = _gateway(database_url, kafka_bootstrap, topic_name, start_service)
    common = ("--kafka", kafka_bootstrap, "--topic", topic_name, "--target", gateway.url)
    common += ("--database-url", database_url, "--drain-timeout", "20")
    prom, prom_url = start_prometheus(prometheus_binary(), {"gateway": gateway.url}, tmp_path)
    try:
        # As in a running deployment, Prometheus has scraped the processor before the run starts.
        deadline = time.monotonic() + 20
        while not instant(prom_url, 'up{job="gateway"} == 1') and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        code, report, stderr = _run_load_test(
            *common,
            *("--rate", "100", "--duration", "3", "--report-dir", str(tmp_path), "--seed", "5"),
            *("--prometheus", prom_url, "--prometheus-wait", "2.5"),
        )
    finally:
        prom.terminate()
        prom.wait(timeout=20)
    assert code == 0, (report["verdict"], stderr, gateway.logs())
    assert report["via"] == "kafka"
    assert report["sent"] == report["accepted"] == 300
    progress = [line for line in stderr.splitlines() if re.match(r"\s+\d+\.\ds sent \d+, acknowledged", line)]
    assert len(progress) >= 2, stderr  # a progress line every second while running
    metrics = report["processing"]["metrics"]
    database = report["processing"]["database"]
    assert metrics["processed"] == 300
    assert database["stored"] == 300  # the cross-check agrees
    # Event -> stored latency from the processor's histogram and exactly from the rows agree
    # within the histogram's bucket resolution.
    assert 0 < database["p50_s"] <= database["p99_s"] < 5
    assert 0 < metrics["mean_s"] < 1
    # Prometheus' increase() over the run extrapolates to the window's edges: close, not exact.
    prometheus = report["processing"]["prometheus"]
    assert prometheus["processed"] == pytest.approx(300, rel=0.2), prometheus
    assert 0 < prometheus["p50_s"] <= prometheus["p99_s"] < 5
    assert report["figures_from"] == "prometheus"
    assert report["verdict"]["met"] is True
    assert report["verdict"]["events_per_minute"] >= 2500
    assert report["timeline"], "no per-second timeline"
    page = (tmp_path / "load-test.html").read_text()
    assert "<svg" in page
    assert "polyline" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no external assets
    assert json.loads((tmp_path / "load-test.json").read_text())["sent"] == 300

    # Too slow a rate for the target: the run itself succeeds, the verdict fails the exit code.
    code, report, stderr = _run_load_test(*common, "--rate", "20", "--duration", "1")
    assert code == 1
    assert report["verdict"]["met"] is False
    assert "target >= 2500" in report["verdict"]["reasons"][0]
    assert "target MISSED" in stderr
