"""`python -m shared.migrate` (the compose `migrate` service and the Kubernetes Job) on real databases."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from shared.db import migration_files, with_database
from tools.dev.embedded import free_port

pytestmark = pytest.mark.integration


def _migrate(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    # A clean environment in an empty directory: no DATABASE_URL or `.env` of the caller leaks in.
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TIMESCALE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "shared.migrate", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


async def _applied(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT target, name FROM schema_migrations ORDER BY target, name")
        return [(r["target"], r["name"]) for r in rows]
    finally:
        await conn.close()


async def _has_table(dsn: str, table: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
    finally:
        await conn.close()


def test_migrates_both_databases_once_and_is_idempotent(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    primary = make_database("primary", migrate=False)
    replica = make_database("replica", migrate=False)
    env = {"DATABASE_URL": primary, "TIMESCALE_URL": replica}

    first = _migrate(env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert asyncio.run(_has_table(primary, "access_events"))
    assert asyncio.run(_has_table(replica, "access_events_replica"))
    assert not asyncio.run(_has_table(primary, "access_events_replica"))
    expected_primary = [("primary", p.name) for p in migration_files("primary")]
    expected_replica = [("replica", p.name) for p in migration_files("replica")]
    assert asyncio.run(_applied(primary)) == expected_primary
    assert asyncio.run(_applied(replica)) == expected_replica
    assert "primary: applied" in first.stderr

    again = _migrate(env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "primary: schema up to date" in again.stderr
    assert "replica: schema up to date" in again.stderr
    assert asyncio.run(_applied(primary)) == expected_primary


def test_one_target_from_the_command_line(make_database: Callable[..., str], tmp_path: Path) -> None:
    primary = make_database("primary", migrate=False)
    result = _migrate("--target", "primary", "--database-url", primary, env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert asyncio.run(_has_table(primary, "access_events"))
    assert "replica:" not in result.stderr


def test_a_database_that_does_not_exist_fails_at_once(
    pg_server_dsn: str, make_database: Callable[..., str], tmp_path: Path
) -> None:
    replica = make_database("replica", migrate=False)
    missing = with_database(pg_server_dsn, "sentinel_no_such_database")
    started = time.monotonic()
    result = _migrate("--wait", "30", env={"DATABASE_URL": missing, "TIMESCALE_URL": replica}, cwd=tmp_path)
    assert result.returncode == 1
    assert time.monotonic() - started < 20  # not retried: the server answered, the database is wrong
    assert "migrating primary failed" in result.stderr
    assert "sentinel_no_such_database" in result.stderr
    # The other target is still migrated, so one bad URL does not hide the state of the other.
    assert asyncio.run(_has_table(replica, "access_events_replica"))


def test_an_unreachable_server_is_retried_until_the_wait_runs_out(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/sentinel"
    started = time.monotonic()
    result = _migrate("--target", "primary", "--wait", "2", "--database-url", url, env={}, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "not reachable yet" in result.stderr
    assert 1.0 <= elapsed < 30


def test_missing_settings_are_a_usage_error(tmp_path: Path) -> None:
    result = _migrate(env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr
    assert _migrate("--wait", "-1", env={}, cwd=tmp_path).returncode == 2
    assert _migrate("--target", "nowhere", env={}, cwd=tmp_path).returncode == 2
