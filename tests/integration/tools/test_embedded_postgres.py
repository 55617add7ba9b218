"""The embedded PostgreSQL that `make run` uses on a machine without one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tools.dev.embedded import EmbeddedPostgres


def test_embedded_postgres_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    async def query(dsn: str, sql: str) -> object:
        conn = await asyncpg.connect(dsn)
        try:
            if ";" in sql:
                return await conn.execute(sql)
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    data = tmp_path / "pgdata"
    with EmbeddedPostgres(data) as pg:
        asyncio.run(query(pg.dsn, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"))
    with EmbeddedPostgres(data) as pg:
        assert asyncio.run(query(pg.dsn, "SELECT x FROM kept")) == 42
    assert not (data / "postmaster.pid").exists()
