"""A real Prometheus server for end-to-end tests: a generated scrape config on a free port."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.optimizer.scrape import Scrape
from tools.dev.embedded import free_port
from tools.dev.servers import unavailable

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def prometheus_binary() -> str:
    """The Debian package's server; skips locally (fails under CI) when it is not installed."""
    if not (shutil.which(PROMETHEUS) and shutil.which(PROMTOOL)):
        unavailable("prometheus and promtool (apt-get install prometheus)")
    return PROMETHEUS


def start_prometheus(
    binary: str, targets: dict[str, str], tmp_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Scrape every target each second with `job` (and `service`) = its name; storage in tmp_path.

    The config is checked with promtool first, so a bad config fails with promtool's message.
    """
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [url.removeprefix("http://")], "labels": {"service": job}}],
            }
            for job, url in targets.items()
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    check = subprocess.run([PROMTOOL, "check", "config", str(config_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("prometheus did not become ready")


def instant(prom: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector; a refused query fails the test with Prometheus's error."""
    body = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scrape_metrics(url: str) -> Scrape:
    """A service's own `/metrics`, parsed: the raw truth Prometheus-derived signals are checked against."""
    return Scrape.parse(httpx.get(url + "/metrics", timeout=5).text)
