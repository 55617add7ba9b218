"""PostgreSQL and Redis exporters against real servers, scraped by a real Prometheus.

The PostgreSQL exporter reads the test's database on the suite's server; the Redis exporter
watches a private redis-server, which the test then stops: `redis_up` drops to 0, the
condition of the `RedisDown` alert.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from shared.settings import REPO_ROOT
from tests.e2e.grafana.exporters import exporters
from tests.e2e.grafana.test_dashboards import fill_variables, panels
from tools.dev.prometheus import instant, prometheus_binary, start_prometheus
from tools.dev.servers import start_redis_server

pytestmark = pytest.mark.e2e

DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "dashboards" / "performance.json"


def _wait(prom: str, expr: str, timeout_s: float = 20) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = instant(prom, expr)
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{expr}: no series within {timeout_s} s")


def test_exporters_report_real_servers_and_a_stopped_redis(database_url: str, tmp_path: Path) -> None:
    binary = prometheus_binary()
    redis_proc, redis_url = start_redis_server()
    try:
        with exporters(database_url, redis_url, tmp_path) as urls:
            prom, prom_url = start_prometheus(binary, urls, tmp_path)
            try:
                assert _wait(prom_url, "pg_up == 1")[0]["metric"]["job"] == "postgres"  # type: ignore[index]
                assert _wait(prom_url, "redis_up == 1")[0]["metric"]["job"] == "redis"  # type: ignore[index]
                time.sleep(3)  # a few scrapes, so rate() has two points
                dashboard = json.loads(DASHBOARD.read_text())
                datastore = [
                    (p["title"], t["expr"])
                    for p in panels(dashboard)
                    for t in p.get("targets", [])
                    if p["title"].startswith(("PostgreSQL", "Redis"))
                ]
                assert len(datastore) >= 6
                for title, expr in datastore:
                    result = instant(prom_url, fill_variables(expr, dashboard))
                    finite = [r for r in result if not re.fullmatch(r"[+-]?(NaN|Inf)", r["value"][1])]
                    assert finite, f"{title}: {expr} -> no series"
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
                _wait(prom_url, "redis_up == 0")
                assert instant(prom_url, "pg_up == 1")
            finally:
                prom.terminate()
                prom.wait(timeout=20)
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()
            redis_proc.wait(timeout=10)
