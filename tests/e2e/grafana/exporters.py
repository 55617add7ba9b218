"""Debian's PostgreSQL and Redis exporters in front of real servers, for the Prometheus tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tools.dev.embedded import free_port
from tools.dev.servers import unavailable

POSTGRES_EXPORTER = "/usr/bin/prometheus-postgres-exporter"
REDIS_EXPORTER = "/usr/bin/prometheus-redis-exporter"


def _with_sslmode(dsn: str) -> str:
    if "sslmode=" in dsn:
        return dsn
    return dsn + ("&" if "?" in dsn else "?") + "sslmode=disable"


def _wait_metrics(url: str, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/metrics", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, f"{name} exited: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{name} did not serve /metrics: {log.read_text()[-2000:]}")


@contextmanager
def exporters(database_url: str, redis_url: str, log_dir: Path) -> Iterator[dict[str, str]]:
    """`{"postgres": url, "redis": url}` of running exporters; stopped on exit."""
    for binary in (POSTGRES_EXPORTER, REDIS_EXPORTER):
        if not shutil.which(binary):
            unavailable(f"{binary} (Debian packages prometheus-postgres-exporter, prometheus-redis-exporter)")
    pg_port, redis_port = free_port(), free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        pg_log = log_dir / "postgres-exporter.log"
        with open(pg_log, "wb") as out:
            pg = subprocess.Popen(
                [POSTGRES_EXPORTER, f"--web.listen-address=127.0.0.1:{pg_port}"],
                env={"DATA_SOURCE_NAME": _with_sslmode(database_url), "PATH": "/usr/bin:/bin"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(pg)
        redis_log = log_dir / "redis-exporter.log"
        with open(redis_log, "wb") as out:
            redis = subprocess.Popen(
                [
                    REDIS_EXPORTER,
                    f"--web.listen-address=127.0.0.1:{redis_port}",
                    f"--redis.addr={redis_url}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(redis)
        urls = {"postgres": f"http://127.0.0.1:{pg_port}", "redis": f"http://127.0.0.1:{redis_port}"}
        _wait_metrics(urls["postgres"], pg, "postgres-exporter", pg_log)
        _wait_metrics(urls["redis"], redis, "redis-exporter", redis_log)
        yield urls
    finally:
        for proc in started:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
