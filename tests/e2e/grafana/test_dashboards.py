"""Every Grafana panel's query returns series from a real Prometheus scraping a running fleet.

The test starts the four services, drives traffic through them (events, a message the processor
must dead-letter, analytics reads, browser vitals, a route whose upstream is down so a breaker
opens), starts `prometheus` on a free port with a generated scrape config (checked by promtool)
and runs each panel's PromQL with Grafana's variables filled in as Grafana would.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.settings import REPO_ROOT
from tests.e2e.grafana.exporters import exporters
from tests.factories import event_dict
from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess, service_env
from tools.dev.prometheus import instant, prometheus_binary, start_prometheus
from tools.dev.servers import start_redis_server

GRAFANA = REPO_ROOT / "monitoring" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

pytestmark = pytest.mark.e2e


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{dashboard['uid']} / {panel['title']} / {t['refId']}", t["expr"])
        for panel in panels(dashboard)
        for t in panel.get("targets", [])
        if t.get("expr")
    ]


def fill_variables(expr: str, dashboard: dict[str, Any]) -> str:
    """What Grafana sends: built-in intervals, and each template variable at its "All" value."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    for var in dashboard.get("templating", {}).get("list", []):
        expr = expr.replace(f"${var['name']}", var.get("allValue") or ".+")
    assert "$" not in expr, f"unfilled variable in {expr}"
    return expr


def test_dashboards_and_provisioning_are_consistent() -> None:
    assert {p.name for p in DASHBOARDS} >= {"performance.json", "load_test.json"}
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "fleet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid


@pytest.fixture
def prometheus_bin() -> str:
    return prometheus_binary()


@pytest.fixture
def fleet(
    database_url: str,
    replica_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
) -> dict[str, ServiceProcess]:
    # The shipped route table plus one route whose upstream never answers: its breaker opens.
    routes = yaml.safe_load((REPO_ROOT / "config" / "routes.yaml").read_text())
    routes["routes"].append(
        {
            "prefix": "/api/v1/unreachable",
            "upstream": f"http://127.0.0.1:{free_port()}",
            "breaker": "external_api",
            "timeout": "1s",
        }
    )
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes))
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
        "TIMESCALE_URL": replica_url,
        "ANALYTICS_MAX_WORKERS": "1",
        "PERFORMANCE_SNAPSHOT_INTERVAL": "1",
        "MONITORING_EVALUATION_INTERVAL": "1",
        "GATEWAY_ROUTES_CONFIG": str(routes_file),
    }
    analytics = start_service("services.analytics", env, wait_ready=True)
    optimizer = start_service("services.optimizer", env, wait_ready=True)
    replicator = start_service("services.replicator", env, wait_ready=True)
    urls = {"ANALYTICS_URL": analytics.url, "OPTIMIZER_URL": optimizer.url, "REPLICATOR_URL": replicator.url}
    gateway = start_service("services.gateway", {**env, **urls}, wait_ready=True)
    return {"gateway": gateway, "analytics": analytics, "optimizer": optimizer, "replicator": replicator}


async def _send_raw(bootstrap: str, topic: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, request_timeout_ms=10_000
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


class Traffic:
    """Steady load on every service until stopped, so rates and quantiles have data."""

    def __init__(self, fleet: dict[str, ServiceProcess]) -> None:
        self.fleet = fleet
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        gw = self.fleet["gateway"].url
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    now = datetime.now(UTC).isoformat()
                    http.post(gw + "/api/v1/events", json=[event_dict(timestamp=now) for _ in range(5)])
                    # Twice: new events invalidate the cached summary, the second read is a hit.
                    http.get(gw + "/api/v1/analytics/summary")
                    http.get(gw + "/api/v1/analytics/summary")
                    http.get(gw + "/api/v1/optimizer/status")
                    http.post(
                        gw + "/api/v1/performance/vitals", json=[{"name": "LCP", "value": 1200, "page": "/"}]
                    )
                    http.get(gw + "/dashboard/performance/data")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.stop.wait(0.3)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def test_every_panel_query_returns_series(
    fleet: dict[str, ServiceProcess],
    kafka_bootstrap: str,
    topic_name: str,
    prometheus_bin: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    # The datastore panels read Debian's exporters in front of the fleet's database and a Redis.
    redis_proc, redis_url = start_redis_server()
    try:
        with exporters(database_url, redis_url, tmp_path) as exporter_urls:
            _every_panel_query_returns_series(
                fleet, exporter_urls, kafka_bootstrap, topic_name, prometheus_bin, tmp_path
            )
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def _every_panel_query_returns_series(
    fleet: dict[str, ServiceProcess],
    exporter_urls: dict[str, str],
    kafka_bootstrap: str,
    topic_name: str,
    prometheus_bin: str,
    tmp_path: Path,
) -> None:
    gw = fleet["gateway"].url
    # A message the processor cannot parse: it is dead-lettered and counted with its reason.
    asyncio.run(_send_raw(kafka_bootstrap, topic_name, b"{not json"))
    # Calls to a dead upstream until its breaker opens (a transition into `open`).
    for _ in range(15):
        httpx.get(gw + "/api/v1/unreachable/x", timeout=5)
    assert httpx.get(gw + "/breaker", timeout=5).json()["external_api"]["open"] >= 1

    targets = {name: service.url for name, service in fleet.items()} | exporter_urls
    prom, prom_url = start_prometheus(prometheus_bin, targets, tmp_path)
    try:
        with Traffic(fleet) as traffic:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                up = instant(prom_url, "up == 1")
                if len(up) == len(targets) and len(instant(prom_url, "count_over_time(up[1m])")) == len(
                    targets
                ):
                    break
                time.sleep(0.5)
            # The exporters answer a scrape only once they have queried their server; on a busy
            # machine the first scrapes of the PostgreSQL exporter can time out.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                instant(prom_url, "pg_up == 1") and instant(prom_url, "redis_up == 1")
            ):
                time.sleep(0.5)
            time.sleep(6)  # several scrapes with traffic in between, so every rate() has two points
            failures = []
            checked = 0
            for path in DASHBOARDS:
                dashboard = json.loads(path.read_text())
                for where, expr in queries(dashboard):
                    result = instant(prom_url, fill_variables(expr, dashboard))
                    checked += 1
                    finite = [r for r in result if not re.fullmatch(r"[+-]?(NaN|Inf)", r["value"][1])]
                    if not finite:
                        failures.append(f"{where}: {expr} -> {result or 'no series'}")
        assert not traffic.errors[:3], traffic.errors[:3]
    finally:
        prom.terminate()
        prom.wait(timeout=20)
    assert checked >= 30
    assert not failures, "\n".join(failures)
