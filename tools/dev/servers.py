"""Where the test suite finds its real servers: the environment, the machine, or embedded ones.

Order for each server: an explicit TEST_* URL; the machine's server on its standard port;
an embedded one started for the session. When none can be had, tests skip, except under
CI=true, where a missing server fails the run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from tools.dev.embedded import EmbeddedKafka, EmbeddedPostgres, free_port, redis_server_binary, wait_for_port

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(what: str) -> None:
    """Skip locally, fail under CI: a skipped integration test hides a gap."""
    if IN_CI:
        pytest.fail(f"{what} is not available and CI=true forbids skipping", pytrace=False)
    pytest.skip(f"{what} is not available")


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _can_connect(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


class PostgresProvider:
    def __init__(self) -> None:
        self._embedded: EmbeddedPostgres | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.server_dsn: str | None = None

    def get(self) -> str:
        if self.server_dsn:
            return self.server_dsn
        explicit = os.environ.get("TEST_DATABASE_URL")
        machine = "postgresql://postgres@127.0.0.1:5432/postgres"
        if explicit:
            self.server_dsn = explicit
        elif asyncio.run(_can_connect(machine)):
            self.server_dsn = machine
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="sentinel-pg-")
            self._embedded = EmbeddedPostgres(Path(self._tmp.name) / "pgdata").start()
            self.server_dsn = self._embedded.dsn
        return self.server_dsn

    def close(self) -> None:
        if self._embedded:
            self._embedded.stop()
        if self._tmp:
            self._tmp.cleanup()


class KafkaProvider:
    def __init__(self) -> None:
        self._embedded: EmbeddedKafka | None = None
        self.bootstrap: str | None = None

    def get(self) -> str:
        if self.bootstrap:
            return self.bootstrap
        explicit = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
        if explicit:
            self.bootstrap = explicit
        else:
            self._embedded = EmbeddedKafka().start()
            self.bootstrap = self._embedded.bootstrap_servers
        return self.bootstrap

    def close(self) -> None:
        if self._embedded:
            self._embedded.stop()


class RedisProvider:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    def get(self) -> str | None:
        if self.url:
            return self.url
        explicit = os.environ.get("TEST_REDIS_URL")
        if explicit:
            self.url = explicit
        elif _tcp_open("127.0.0.1", 6379):
            self.url = "redis://127.0.0.1:6379/0"
        elif binary := redis_server_binary():
            self._process, self.url = start_redis_server(binary)
        return self.url

    def close(self) -> None:
        if self._process:
            self._process.terminate()
            self._process.wait(timeout=10)


def start_redis_server(
    binary: str | None = None, port: int | None = None, extra_args: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (tests that stop and restart Redis use their own); `extra_args`
    such as `--requirepass` or the `--tls-*` options go to its command line."""
    binary = binary or redis_server_binary()
    if not binary:
        unavailable("redis-server")
    assert binary
    port = port or free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *(extra_args or []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, timeout_s=10)
    return proc, f"redis://127.0.0.1:{port}/0"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_until(predicate: object, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")
