"""Alerts reach a person: real Prometheus and Alertmanager, a service stopped and started again.

The repository's Alertmanager routing (grouping, the critical route with email, the inhibition
of a down service's latency alerts) is used as shipped; only the receivers' addresses and the
timings are replaced, so the test finishes in seconds. A local Slack-compatible receiver decodes
the webhook JSON Alertmanager posts, an aiosmtpd server the email.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.settings import REPO_ROOT
from tests.integration.performance.receivers import SlackReceiver, SmtpReceiver, slack_receiver, smtp_receiver
from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess, start_service
from tools.dev.prometheus import PROMTOOL, prometheus_binary
from tools.dev.servers import unavailable

__all__ = ["slack_receiver", "smtp_receiver", "start_service"]

pytestmark = pytest.mark.e2e

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules" / "fleet-alerts.yml"
AM_CONFIG = REPO_ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
FIRING_WITHIN_S = 30
RESOLVED_WITHIN_S = 30


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready: {log.read_text()[-2000:]}")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def alertmanager_config(tmp_path: Path, slack_url: str, smtp_port: int) -> Path:
    """The shipped routing, with local receivers and second-scale timings."""
    config: dict[str, Any] = yaml.safe_load(AM_CONFIG.read_text())
    secret = tmp_path / "slack_webhook_url"
    secret.write_text(slack_url)
    config["global"].update(smtp_smarthost=f"127.0.0.1:{smtp_port}", smtp_require_tls=False)
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(secret)
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def prometheus_config(tmp_path: Path, target: str, alertmanager: str) -> Path:
    """ServiceDown as shipped but after 2 s instead of a minute, and a latency alert of the same
    service that fires with it: the inhibition must keep it from anyone."""
    rules = yaml.safe_load(RULES.read_text())
    service_down = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ServiceDown")
    service_down["for"] = "2s"
    probe = {
        "alert": "LatencyProbe",
        "expr": 'up{job="optimizer"} == 0',
        "for": "6s",  # longer than ServiceDown's, as every shipped latency alert's is
        "labels": {"severity": "warning", "kind": "latency"},
        "annotations": {"summary": "slow", "description": "slow", "runbook_url": "docs/operations.md#x"},
    }
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "test", "rules": [service_down, probe]}]})
    )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "optimizer", "static_configs": [{"targets": [target]}]}],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return path


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def _titles(receiver: SlackReceiver) -> list[str]:
    return [str(msg["attachments"][0]["title"]) for msg in receiver.messages]


def test_a_stopped_service_fires_then_resolves_through_alertmanager(
    tmp_path: Path,
    slack_receiver: SlackReceiver,
    smtp_receiver: SmtpReceiver,
    start_service: Callable[..., ServiceProcess],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    prometheus = prometheus_binary()
    if not shutil.which(ALERTMANAGER):
        unavailable("prometheus-alertmanager (Debian package)")
    port = free_port()
    env = {"OPTIMIZER_ENABLED": "false", "TRACING_ENABLED": "false"}
    service = start_service("services.optimizer", env, port=port)
    service.wait_for("/health")

    am_port = free_port()
    am_url = f"http://127.0.0.1:{am_port}"
    am_log = tmp_path / "alertmanager.log"
    am = _spawn(
        [
            ALERTMANAGER,
            f"--config.file={alertmanager_config(tmp_path, slack_receiver.url, smtp_receiver.port)}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        am_log,
    )
    processes.append(am)
    _wait_ready(am_url, am, am_log)

    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
    prom_log = tmp_path / "prometheus.log"
    prom = _spawn(
        [
            prometheus,
            f"--config.file={prometheus_config(tmp_path, f'127.0.0.1:{port}', f'127.0.0.1:{am_port}')}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        prom_log,
    )
    processes.append(prom)
    _wait_ready(prom_url, prom, prom_log)

    def up() -> float | None:
        result = httpx.get(prom_url + "/api/v1/query", params={"query": "up"}, timeout=5).json()
        values = result["data"]["result"]
        return float(values[0]["value"][1]) if values else None

    _wait_for(lambda: up() == 1.0, 20, "the first scrape")
    assert slack_receiver.messages == []

    service.stop()
    fired_after = _wait_for(
        lambda: any(t.startswith("[FIRING") and "ServiceDown" in t for t in _titles(slack_receiver)),
        FIRING_WITHIN_S,
        "the firing ServiceDown notification",
    )
    message = next(m for m in slack_receiver.messages if "ServiceDown" in m["attachments"][0]["title"])
    attachment = message["attachments"][0]
    assert attachment["title"] == "[FIRING] ServiceDown (optimizer)"
    assert "does not answer /metrics" in attachment["text"]
    assert "runbook: docs/operations.md#servicedown" in attachment["text"]
    # Critical: the email route too.
    _wait_for(lambda: bool(smtp_receiver.messages), 10, "the ServiceDown email")
    assert "ServiceDown" in str(smtp_receiver.messages[0]["Subject"])

    def probe_firing() -> bool:
        query = 'ALERTS{alertname="LatencyProbe", alertstate="firing"}'
        body = httpx.get(prom_url + "/api/v1/query", params={"query": query}, timeout=5).json()
        return bool(body["data"]["result"])

    _wait_for(probe_firing, 20, "the latency alert firing in Prometheus")
    time.sleep(2)  # two group intervals: it would have been notified by now
    # The latency alert of the down service fired in Prometheus but ServiceDown inhibited it.
    # Asserted while the service is down: at the restart both alerts resolve, but Prometheus may
    # resolve ServiceDown one evaluation before the probe (a scrape can land between the two
    # rules' queries), and for that second Alertmanager no longer inhibits the probe (seen once
    # in CI). Shipped latency alerts are computed from the service's own samples, not from `up`,
    # so they do not switch with ServiceDown the way this probe does.
    assert not any("LatencyProbe" in t for t in _titles(slack_receiver)), _titles(slack_receiver)
    start_service("services.optimizer", env, port=port).wait_for("/health")
    resolved_after = _wait_for(
        lambda: any(t.startswith("[RESOLVED") and "ServiceDown" in t for t in _titles(slack_receiver)),
        RESOLVED_WITHIN_S,
        "the resolved ServiceDown notification",
    )
    print(f"firing after {fired_after:.1f} s, resolved {resolved_after:.1f} s after the restart")
