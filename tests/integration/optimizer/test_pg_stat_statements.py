"""Index advice from `pg_stat_statements`: statements the server really ran become recommendations.

The machine's PostgreSQL may not preload the extension, so these tests start their own
embedded PostgreSQL (18, which ships pg_stat_statements and plans parameterised statement texts
with `EXPLAIN (GENERIC_PLAN)`) with `shared_preload_libraries=pg_stat_statements`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import pytest

from services.optimizer.index_optimizer import IndexOptimizer, IndexRecommendation
from shared.db import apply_migrations, ensure_database
from shared.settings import REPO_ROOT
from tools.dev.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration

_FILL = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, facility_id)
SELECT 'ss-' || g, timestamptz '2025-01-01' + (g::bigint * 97 % 31536000) * interval '1 second',
       'p' || (g % 5000), 'd' || (g % 40), 'b' || (g % 5000),
       CASE WHEN g % 10 = 0 THEN 'Denied' ELSE 'Granted' END, 'f' || (g % 3)
FROM generate_series(1, 150000) AS g
"""
# No known query of the fleet filters on person_id alone, so a recommendation of exactly
# (person_id) can only come from the statement statistics.
PERSON_QUERY = "SELECT time, door_id, access_result FROM access_events WHERE person_id = $1"
DOOR_QUERY = "SELECT event_id, person_id FROM access_events WHERE door_id = $1"


@pytest.fixture(scope="module")
def stat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg_stat_statements") / "pgdata",
        settings={"shared_preload_libraries": "pg_stat_statements", "shared_buffers": "64MB"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def database_on(server: EmbeddedPostgres, name: str) -> str:
    async def create() -> str:
        await ensure_database(server.dsn, name)
        dsn = f"postgresql://postgres@127.0.0.1:{server.port}/{name}"
        await apply_migrations(dsn, "primary")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        finally:
            await conn.close()
        return dsn

    return asyncio.run(create())


async def fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_FILL)
        await conn.execute("ANALYZE access_events")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def run_statement(dsn: str, query: str, values: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for value in values:
            await conn.fetch(query, value)
    finally:
        await conn.close()


async def explain(dsn: str, query: str, value: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {query}", value))
    finally:
        await conn.close()


def observed(recommendations: list[IndexRecommendation], columns: list[str]) -> list[IndexRecommendation]:
    return [r for r in recommendations if r.table == "access_events" and r.columns == columns]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.optimizer.index_cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_statement_the_server_ran_is_recommended_and_indexed(stat_server: EmbeddedPostgres) -> None:
    dsn = await asyncio.to_thread(database_on, stat_server, "ss_recommend")
    await fill(dsn)
    optimizer = IndexOptimizer(dsn)

    before = await optimizer.recommend_new_indexes()
    assert observed(before, ["person_id"]) == [], [r.as_dict() for r in before]
    assert all(r.source.startswith("known query") for r in before), [r.source for r in before]

    await run_statement(dsn, PERSON_QUERY, [f"p{n}" for n in range(1, 8)])
    assert "Seq Scan on access_events" in await explain(dsn, PERSON_QUERY, "p42")

    recommendations = await optimizer.recommend_new_indexes()
    [rec] = observed(recommendations, ["person_id"])
    assert rec.source == "pg_stat_statements"
    assert rec.query == PERSON_QUERY  # the statement text as the server recorded it
    assert "sequential scan of access_events" in rec.reason
    assert rec.create_command == "python -m services.optimizer.index_cli create access_events person_id"

    analyzed = await asyncio.to_thread(cli, dsn, "analyze", "--json")
    assert analyzed.returncode == 0, analyzed.stderr
    assert '"source": "pg_stat_statements"' in analyzed.stdout

    created = await asyncio.to_thread(cli, dsn, "create", "access_events", "person_id")
    assert created.returncode == 0, created.stdout + created.stderr
    assert 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "access_events_person_id_idx"' in created.stdout

    plan = await explain(dsn, PERSON_QUERY, "p42")
    assert "access_events_person_id_idx" in plan, plan
    assert observed(await optimizer.recommend_new_indexes(), ["person_id"]) == []


async def test_statements_of_another_database_are_not_advice_for_this_one(
    stat_server: EmbeddedPostgres,
) -> None:
    dsn = await asyncio.to_thread(database_on, stat_server, "ss_analysed")
    other = await asyncio.to_thread(database_on, stat_server, "ss_other")
    await fill(dsn)
    optimizer = IndexOptimizer(dsn)

    # The same table exists (empty) in the other database, as on a server holding primary and replica.
    await run_statement(other, DOOR_QUERY, [f"d{n}" for n in range(1, 8)])
    from_other = await optimizer.recommend_new_indexes()
    assert [r for r in from_other if r.source == "pg_stat_statements"] == [], [
        r.as_dict() for r in from_other
    ]

    # Run here, the very same statement is advice: the filter above is what kept it out.
    await run_statement(dsn, DOOR_QUERY, [f"d{n}" for n in range(1, 8)])
    [rec] = observed(await optimizer.recommend_new_indexes(), ["door_id"])
    assert rec.source == "pg_stat_statements"
    assert rec.query == DOOR_QUERY
