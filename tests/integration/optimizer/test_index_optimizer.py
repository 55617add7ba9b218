"""Index advice on a real database: a sequential scan is found, the index is built, the query speeds up."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import asyncpg
import pytest

from services.optimizer.index_optimizer import IndexOptimizer
from shared.settings import REPO_ROOT

pytestmark = pytest.mark.integration

_FILL = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, facility_id)
SELECT 'ix-' || g, timestamptz '2025-01-01' + (g::bigint * 97 % 31536000) * interval '1 second',
       'p' || (g % 5000), 'd' || (g % 40), 'b' || (g % 5000),
       CASE WHEN g % 10 = 0 THEN 'Denied' ELSE 'Granted' END, 'f' || (g % 3)
FROM generate_series(1, 200000) AS g
"""
BADGE_QUERY = "SELECT * FROM access_events WHERE badge_id = 'b1234' ORDER BY time DESC LIMIT 100"


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.optimizer.index_cli", "--database-url", database_url, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def explain(conn: asyncpg.Connection, query: str) -> str:
    return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {query}"))


async def median_ms(conn: asyncpg.Connection, query: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await conn.fetch(query)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def test_seq_scan_gets_a_recommendation_and_the_index_makes_it_fast(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(_FILL)
        await conn.execute("ANALYZE access_events")
        plan_before = await explain(conn, BADGE_QUERY)
        assert "Seq Scan" in plan_before
        before_ms = await median_ms(conn, BADGE_QUERY)

        recommendations = await IndexOptimizer(database_url).recommend_new_indexes()
        by_columns = {tuple(r.columns): r for r in recommendations}
        assert ("badge_id", "time") in by_columns, [r.columns for r in recommendations]
        rec = by_columns[("badge_id", "time")]
        assert rec.table == "access_events"
        assert "sequential scan" in rec.reason

        # The CLI agrees, as JSON.
        analyzed = cli(database_url, "analyze", "--json")
        assert analyzed.returncode == 0, analyzed.stderr
        report = json.loads(analyzed.stdout)
        assert ["badge_id", "time"] in [r["columns"] for r in report["recommendations"]]

        dry = cli(database_url, "create", "access_events", "badge_id", "time", "--dry-run")
        assert dry.returncode == 0
        assert 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "access_events_badge_id_time_idx"' in dry.stdout
        assert "Seq Scan" in await explain(conn, BADGE_QUERY)  # dry run built nothing

        created = cli(database_url, "create", "access_events", "badge_id", "time")
        assert created.returncode == 0, created.stderr
        again = cli(database_url, "create", "access_events", "badge_id", "time")
        assert again.returncode == 0, again.stderr  # IF NOT EXISTS

        plan_after = await explain(conn, BADGE_QUERY)
        assert "access_events_badge_id_time_idx" in plan_after, plan_after
        after_ms = await median_ms(conn, BADGE_QUERY)
        assert after_ms < before_ms / 2, (before_ms, after_ms)

        remaining = await IndexOptimizer(database_url).recommend_new_indexes()
        assert ("badge_id", "time") not in {tuple(r.columns) for r in remaining}
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "args",
    [
        ["access_events; DROP TABLE access_events", "badge_id"],
        ["access_events", "badge_id); DROP TABLE access_events; --"],
        ['access_events"', "badge_id"],
        ["no_such_table", "badge_id"],
        ["access_events", "no_such_column"],
        ["access_events", "badge_id", "badge_id"],
    ],
)
def test_injection_and_unknown_names_are_refused(database_url: str, args: list[str]) -> None:
    result = cli(database_url, "create", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ")
    assert "refused" in result.stderr or "twice" in result.stderr
    assert "Traceback" not in result.stderr


async def test_usage_report_finds_unused_duplicate_and_redundant_indexes(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE INDEX dup_a ON access_events (door_id)")
        await conn.execute("CREATE INDEX dup_b ON access_events (door_id)")
        await conn.execute("CREATE INDEX wide ON access_events (door_id, time)")
        await conn.fetch("SELECT * FROM access_events WHERE event_id = 'x'")  # uses the primary key
    finally:
        await conn.close()
    report = await IndexOptimizer(database_url).analyze_index_usage()
    names = {ix["index"] for ix in report["indexes"]}
    assert {"access_events_pkey", "dup_a", "dup_b", "wide"} <= names
    assert {"table": "access_events", "indexes": ["dup_a", "dup_b"]} in report["duplicates"]
    unused = {ix["index"] for ix in report["unused"]}
    assert {"dup_a", "dup_b", "wide"} <= unused
    assert "access_events_pkey" not in unused  # backs a constraint
    assert {"table": "access_events", "index": "dup_a", "covered_by": "wide"} in report["redundant_prefix"]
    assert report["tables"][0]["table"] == "access_events"
