"""Real service processes for end-to-end tests: `python -m services.<name>` on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import REPO_ROOT
from tools.dev.embedded import free_port

PORT_SETTING = {
    "services.gateway": "GATEWAY_PORT",
    "services.gateway.event_processor": "EVENT_PROCESSOR_PORT",
    "services.analytics": "ANALYTICS_PORT",
    "services.optimizer": "OPTIMIZER_PORT",
    "services.replicator": "REPLICATION_METRICS_PORT",
}


class ServiceProcess:
    """One service process; its output goes to a log file shown when a test fails."""

    def __init__(
        self,
        module: str,
        env: dict[str, str],
        log_dir: Path,
        port: int | None = None,
        *,
        python: str = sys.executable,
        cwd: Path = REPO_ROOT,
        inherit_env: bool = True,
    ) -> None:
        """`python` and `cwd` default to this checkout; an installed copy of the fleet gives its
        own interpreter, a directory of its own and `inherit_env=False` (only `env` is passed)."""
        self.module = module
        self.port = port or free_port()
        self.python = python
        self.cwd = cwd
        self.env = {
            **(os.environ if inherit_env else {}),
            "TRACING_ENABLED": "false",
            "HOST": "127.0.0.1",
            **env,
            PORT_SETTING[module]: str(self.port),
        }
        self.log_path = log_dir / f"{module.replace('.', '_')}_{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = False, timeout_s: float = 30.0) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [self.python, "-m", self.module],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_for("/ready" if wait_ready else "/health", timeout_s)
        return self

    def wait_for(self, path: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                response = httpx.get(self.url + path, timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise AssertionError(f"{self.module} {path} not 200 after {timeout_s}s: {last}\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start a service process; every one is stopped when the test ends."""
    started: list[ServiceProcess] = []

    def start(
        module: str,
        env: dict[str, str],
        *,
        port: int | None = None,
        wait_ready: bool = False,
        timeout_s: float = 30.0,
    ) -> ServiceProcess:
        service = ServiceProcess(module, env, tmp_path, port)
        started.append(service)
        return service.start(wait_ready=wait_ready, timeout_s=timeout_s)

    yield start
    for service in reversed(started):
        service.stop()


def service_env(database_url: str, kafka_bootstrap: str, topic: str) -> dict[str, str]:
    """Settings that point a service process at the test's database, topic and consumer group,
    with the short group timeouts the embedded broker needs for ~1 s joins."""
    return {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ACCESS_EVENTS_TOPIC": topic,
        "ACCESS_EVENTS_DLQ_TOPIC": topic + ".dlq",
        "EVENT_PROCESSOR_GROUP_ID": topic + "-processor",
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    }
