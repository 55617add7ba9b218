"""The replicator as a real process: SIGKILL mid-batch, outages of either database, `--once`."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.db import ensure_database, with_database
from shared.settings import REPO_ROOT
from tests.integration.replicator.checks import assert_replica_matches, table_checksum
from tools.dev.embedded import EmbeddedPostgres
from tools.dev.fleet import ServiceProcess
from tools.dev.servers import unavailable

pytestmark = pytest.mark.e2e

# Rows with event times spread over a year and many sharing a second, inserted server-side.
_BULK_INSERT = """
INSERT INTO access_events (event_id, time, person_id, door_id, access_result)
SELECT $1 || '-' || g, timestamptz '2025-01-01' + ((g * 7919) % 31536000) * interval '1 second',
       'p' || (g % 500), 'd' || (g % 40), CASE WHEN g % 10 = 0 THEN 'Denied' ELSE 'Granted' END
FROM generate_series(1, $2::int) AS g
"""


async def _bulk_insert(dsn: str, prefix: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_BULK_INSERT, prefix, n)
    finally:
        await conn.close()


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


class Writer(threading.Thread):
    """Keeps inserting small transactions (some with old timestamps) while the test runs."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop_flag = threading.Event()
        self.batches = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stop_flag.is_set():
                await conn.execute(_BULK_INSERT, f"w{self.batches}", 200)
                self.batches += 1
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


def replicator_env(source: str, target: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": source,
        "TIMESCALE_URL": target,
        "REPLICATION_INTERVAL": "0.2",
        "REPLICATION_BACKOFF_MAX": "1",
        **extra,
    }


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def status(service: ServiceProcess) -> dict[str, object]:
    data: dict[str, object] = httpx.get(service.url + "/status", timeout=5).json()
    return data


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    database_url: str, replica_url: str, tmp_path: Path
) -> None:
    asyncio.run(_bulk_insert(database_url, "bulk", 150_000))
    writer = Writer(database_url)
    writer.start()
    rng = random.Random(5)
    kills_mid_copy = 0
    try:
        for attempt in range(5):
            service = ServiceProcess(
                "services.replicator",
                replicator_env(database_url, replica_url, REPLICATION_BATCH_SIZE="4000"),
                tmp_path,
            ).start()
            time.sleep(rng.uniform(0.3, 1.2))
            before = asyncio.run(_count(replica_url, "access_events_replica"))
            service.kill()
            total = asyncio.run(_count(database_url, "access_events"))
            if 0 < before < total:
                kills_mid_copy += 1
            assert service.proc is not None
            assert service.proc.returncode == -9, f"attempt {attempt}: not killed"
    finally:
        writer.stop_flag.set()
        writer.join(timeout=10)
    assert writer.batches > 0
    assert kills_mid_copy >= 3, "the kills should land while a catch-up was in progress"
    # After the crashes, one `--once` run catches up to the end and exits 0.
    env = {**ServiceProcess("services.replicator", replicator_env(database_url, replica_url), tmp_path).env}
    done = subprocess.run(
        [sys.executable, "-m", "services.replicator", "--once"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    rows = asyncio.run(assert_replica_matches(database_url, replica_url))
    assert rows == 150_000 + 200 * writer.batches


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL cluster of this test's own, so the test may stop and start it.

    Its files live in a directory of their own rather than pytest's tmp_path: other pytest runs
    on the same machine prune old numbered tmp_path roots, which would pull the data directory
    from under a running server.
    """
    with tempfile.TemporaryDirectory(prefix="sentinel-replicator-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        try:
            server.start()
        except Exception as exc:
            unavailable(f"embedded PostgreSQL ({exc}: {getattr(exc, 'stderr', b'')!r})")
        yield server
        server.stop()


@pytest.mark.parametrize("down", ["source", "target"])
def test_outage_of_either_database_is_survived(
    down: str,
    database_url: str,
    replica_url: str,
    private_postgres: EmbeddedPostgres,
    start_service: Callable[..., ServiceProcess],
) -> None:
    from shared.db import apply_migrations

    own = with_database(private_postgres.dsn, "sentinel")
    asyncio.run(ensure_database(private_postgres.dsn, "sentinel"))
    if down == "source":
        asyncio.run(apply_migrations(own, "primary"))
        source, target = own, replica_url
    else:
        source, target = database_url, own
    service = start_service("services.replicator", replicator_env(source, target), wait_ready=True)
    asyncio.run(_bulk_insert(source, "a", 1000))
    wait_for(lambda: status(service)["rows_replicated"] == 1000, 30, "the first 1000 rows")

    private_postgres.stop()
    if down == "target":
        asyncio.run(_bulk_insert(source, "b", 1000))  # piles up while the target is away
    wait_for(lambda: status(service)["errors"][down] is not None, 30, f"the {down} outage to be seen")  # type: ignore[index]
    ready = httpx.get(service.url + "/ready", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["checks"][down] != "ok"
    metrics = httpx.get(service.url + "/metrics", timeout=5).text
    assert f'replication_errors_total{{database="{down}"}}' in metrics

    private_postgres.start()
    if down == "source":
        asyncio.run(_bulk_insert(source, "b", 1000))
    wait_for(lambda: status(service)["rows_replicated"] == 2000, 60, "catch-up after the outage")
    assert status(service)["errors"][down] is None
    assert httpx.get(service.url + "/ready", timeout=5).status_code == 200
    assert asyncio.run(table_checksum(source, "access_events")) == asyncio.run(
        table_checksum(target, "access_events_replica")
    )


def test_metrics_and_status_when_caught_up(
    database_url: str, replica_url: str, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service("services.replicator", replicator_env(database_url, replica_url), wait_ready=True)
    asyncio.run(_bulk_insert(database_url, "m", 500))
    wait_for(lambda: status(service)["rows_replicated"] == 500, 30, "500 rows")
    wait_for(lambda: status(service)["backlog_seconds"] == 0.0, 10, "backlog 0")
    text = httpx.get(service.url + "/metrics", timeout=5).text
    # prometheus_client's own parser: label values may hold spaces (operation names do).
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    assert values["replication_rows_total"] == 500
    assert values["replication_backlog_seconds"] == 0.0
    # Event times are in 2025-01..12, so NOW() minus the newest is large and positive.
    assert values["replication_lag_seconds"] > 0
    assert values["replication_batch_duration_seconds_count"] >= 1
