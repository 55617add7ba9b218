"""PostgreSQL crashes and restarts during a sustained ingest: nothing acknowledged is lost.

Ingestion does not touch the database, so it keeps answering 202; the processor holds its
partitions while the database is down (its breaker opens), then stores the backlog once.
The test runs its own embedded PostgreSQL: the one it crashes is never a shared server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.db import apply_migrations, ensure_database, with_database
from tests.e2e.faults._harness import (
    Traffic,
    dead_letters,
    figures,
    ingest_request,
    wait_breakers_closed,
    wait_stored,
)
from tools.dev.embedded import EmbeddedPostgres
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    server = EmbeddedPostgres(tmp_path / "pg").start()
    try:
        asyncio.run(ensure_database(server.dsn, "fleet"))
        dsn = with_database(server.dsn, "fleet")
        asyncio.run(apply_migrations(dsn, "primary"))
        yield server, dsn
    finally:
        server.stop(mode="immediate")


def test_postgres_restarted_during_sustained_ingest(
    own_postgres: tuple[EmbeddedPostgres, str],
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    server, dsn = own_postgres
    gateway = start_service(
        "services.gateway", service_env(dsn, kafka_bootstrap, topic_name), wait_ready=True
    )
    traffic = Traffic(ingest_request(batch=20), gateway.url)
    traffic.start()
    try:
        time.sleep(3)
        fault_at = time.monotonic()
        server.stop(mode="immediate")  # a crash: no checkpoint, clients cut off
        time.sleep(4)
        server.start()
        back_at = time.monotonic()
        time.sleep(4)
    finally:
        ledger = traffic.stop()
    rows, distinct = wait_stored(dsn, ledger.acknowledged)
    result = figures(
        "PostgreSQL crashed (immediate stop) for 4 s during sustained ingest",
        ledger,
        fault_at=fault_at,
        back_at=back_at,
        stored_rows=rows,
        stored_distinct=distinct,
        dead_lettered=dead_letters(kafka_bootstrap, topic_name + ".dlq"),
        breakers=wait_breakers_closed(gateway.url, ["database", "kafka"]),
        **{"5xx_during_outage": ledger.server_errors(fault_at, back_at)},
    )
    assert result["acknowledged"] > 0
    assert (result["lost"], result["duplicated"], result["dead_lettered"]) == (0, 0, 0), gateway.logs()
    # Ingestion never needs the database: not one 5xx, not even during the outage.
    assert (result["5xx_before_fault"], result["5xx_during_outage"], result["5xx_after_recovery"]) == (
        0,
        0,
        0,
    )
    assert set(result["breakers_after"].values()) == {"closed"}
