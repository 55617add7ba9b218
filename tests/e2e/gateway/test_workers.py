"""A gateway of several worker processes on one port: each accepts ingestion and one scrape of
/metrics covers them all (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.factories import event_dict
from tools.dev.fleet import ServiceProcess, service_env


def _posted(metrics: str) -> float:
    """The summed count of 202 answers to POST /api/v1/events in a scrape."""
    total = 0.0
    for line in metrics.splitlines():
        wanted = ('handler="/api/v1/events"', 'status="202"', 'method="POST"')
        if line.startswith("http_requests_total{") and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_serve_one_port_and_one_scrape_sums_them(
    kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **service_env("postgresql://unused", kafka_bootstrap, topic_name),
        "GATEWAY_RUN_EVENT_PROCESSOR": "false",
        "GATEWAY_WORKERS": "2",
        "INGEST_MEMORY_BUDGET_MB": "512",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    gateway = start_service("services.gateway", env, wait_ready=True, timeout_s=90)
    assert gateway.proc is not None
    workers = [p for p in psutil.Process(gateway.proc.pid).children(recursive=True) if "python" in p.name()]
    assert len(workers) >= 2, [p.cmdline() for p in workers]
    for _ in range(20):
        # A new connection each time, so the kernel may hand it to either worker.
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert client.post("/api/v1/events", json=[event_dict(), event_dict()]).status_code == 202
    scrape = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert _posted(scrape) == 20
    # Every worker wrote its own metric files; gauges name the worker they come from.
    pids = set(re.findall(r'pid="(\d+)"', scrape))
    assert len(pids) >= 2, scrape[:2000]
    assert len({p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("*.db")}) >= 2
