"""`make run` (tools.dev.run_fleet): the whole fleet comes up, serves, and stops without leftovers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from shared.settings import REPO_ROOT
from tests.factories import event_dict
from tools.dev.embedded import free_port

SERVICES = ("gateway", "processor", "analytics", "optimizer", "replicator")


class FleetRun:
    def __init__(self, tmp_path: Path, extra_env: dict[str, str], data_dir: Path) -> None:
        self.ports = {name: free_port() for name in SERVICES}
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"}},
            "TRACING_ENABLED": "false",
            "GATEWAY_PORT": str(self.ports["gateway"]),
            "EVENT_PROCESSOR_PORT": str(self.ports["processor"]),
            "ANALYTICS_PORT": str(self.ports["analytics"]),
            "OPTIMIZER_PORT": str(self.ports["optimizer"]),
            "REPLICATION_METRICS_PORT": str(self.ports["replicator"]),
            "GATEWAY_URL": f"http://127.0.0.1:{self.ports['gateway']}",
            "ANALYTICS_URL": f"http://127.0.0.1:{self.ports['analytics']}",
            "OPTIMIZER_URL": f"http://127.0.0.1:{self.ports['optimizer']}",
            "REPLICATOR_URL": f"http://127.0.0.1:{self.ports['replicator']}",
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
            **extra_env,
        }
        self.data_dir = data_dir
        self.log_path = tmp_path / f"run_fleet_{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self) -> FleetRun:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tools.dev.run_fleet", "--data-dir", str(self.data_dir)],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_all_ready(self, timeout_s: float = 30.0) -> float:
        started = time.monotonic()
        deadline = started + timeout_s
        pending = set(SERVICES)
        while pending and time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, self.logs()
            for service in list(pending):
                try:
                    health = httpx.get(self.url(service) + "/health", timeout=1)
                    ready = httpx.get(self.url(service) + "/ready", timeout=3)
                except httpx.HTTPError:
                    continue
                if health.status_code == 200 and ready.status_code == 200:
                    pending.discard(service)
            time.sleep(0.2)
        assert not pending, f"not ready after {timeout_s}s: {pending}\n{self.logs()}"
        return time.monotonic() - started

    def fleet_pids(self) -> set[int]:
        """The runner, its descendants, and servers it daemonised (pg_ctl reparents postgres)."""
        assert self.proc is not None
        runner = psutil.Process(self.proc.pid)
        pids = {runner.pid} | {p.pid for p in runner.children(recursive=True)}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(self.data_dir) in cmdline:
                pids.add(proc.pid)
        return pids

    def interrupt(self, timeout_s: float = 40.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout_s)

    def logs(self, tail: int | None = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for pid in self.fleet_pids():
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(pid).kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def fleet_runs(tmp_path: Path) -> Iterator[list[FleetRun]]:
    runs: list[FleetRun] = []
    yield runs
    for run in runs:
        run.kill()


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _post_and_wait_for_summary(run: FleetRun, expected_total: int) -> None:
    event = event_dict()
    assert httpx.post(run.url("gateway") + "/api/v1/events", json=event, timeout=10).status_code == 202
    deadline = time.monotonic() + 2.0
    total = None
    while time.monotonic() < deadline:
        total = httpx.get(run.url("gateway") + "/api/v1/analytics/summary", timeout=5).json()["total_events"]
        if total == expected_total:
            return
        time.sleep(0.05)
    raise AssertionError(f"summary shows {total} events, expected {expected_total}\n{run.logs()}")


def test_make_run_with_embedded_servers_keeps_data_and_leaves_nothing_behind(
    tmp_path: Path, fleet_runs: list[FleetRun]
) -> None:
    data_dir = tmp_path / "data"
    first = FleetRun(tmp_path, {}, data_dir).start()
    fleet_runs.append(first)
    first.wait_all_ready(timeout_s=90)
    assert "embedded PostgreSQL" in first.logs(tail=None)
    assert "embedded Kafka broker" in first.logs(tail=None)
    _post_and_wait_for_summary(first, expected_total=1)
    pids = first.fleet_pids()
    assert len(pids) >= 8  # runner, five services (the processor its own), broker, postmaster
    first.interrupt()
    time.sleep(0.5)
    assert _alive(pids) == set(), f"left behind: {_alive(pids)}\n{first.logs()}"

    second = FleetRun(tmp_path, {}, data_dir).start()
    fleet_runs.append(second)
    second.wait_all_ready(timeout_s=90)
    # The first run's event is still there: the embedded database's data survives a restart.
    _post_and_wait_for_summary(second, expected_total=2)
    pids = second.fleet_pids()
    second.interrupt()
    time.sleep(0.5)
    assert _alive(pids) == set()


def test_make_run_uses_the_configured_database_and_starts_none(
    tmp_path: Path, database_url: str, fleet_runs: list[FleetRun]
) -> None:
    data_dir = tmp_path / "data"
    run = FleetRun(tmp_path, {"DATABASE_URL": database_url}, data_dir).start()
    fleet_runs.append(run)
    run.wait_all_ready(timeout_s=90)
    assert "embedded PostgreSQL" not in run.logs(tail=None)
    assert not (data_dir / "postgres").exists()
    _post_and_wait_for_summary(run, expected_total=1)
    pids = run.fleet_pids()
    assert run.interrupt() in (0, 130)
    time.sleep(0.5)
    assert _alive(pids) == set()
