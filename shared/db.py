"""PostgreSQL access: asyncpg pools with sane timeouts, and the schema migration runner.

Migrations are plain SQL files in `shared/migrations/<target>/`, applied in file-name order,
each in its own transaction, recorded in `schema_migrations`; an advisory lock makes concurrent
starters (several services, several replicas) apply each file exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, Literal

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MigrationTarget = Literal["primary", "replica"]
_LOCK_KEY = 0x5E17_1E1  # any constant shared by every starter

# A new connection's budget covers resolving the server's name, and the system resolver sends a
# lost query again only after its `timeout` (resolv.conf; 5 s by default). With a budget of
# 5 s, one lost UDP datagram is a failed connection; on a container network whose DNS server
# drops queries while it reloads (podman's aardvark-dns does whenever a container starts or
# stops) that made a request opening a new connection fail after exactly 5 s. 12 s outlasts
# two lost queries and stays well inside what the gateway allows analytics' reads (30 s) and
# uploads (5 min).
CONNECT_TIMEOUT_S = 12.0
_RESOLVE_RETRY_S = 0.25


async def connect_resolving_again(
    *args: Any,
    timeout: float = CONNECT_TIMEOUT_S,  # noqa: ASYNC109  the pool passes it among its connect kwargs
    **kwargs: Any,
) -> asyncpg.Connection:
    """`asyncpg.connect`, tried again while the server's name fails to resolve for now
    (`EAI_AGAIN`), within one budget of `timeout` seconds for all the tries.

    The resolver gives up with `EAI_AGAIN` once its own tries are lost (5 s each by default),
    which can be before the budget is spent; on a container network whose DNS server drops
    queries while it reloads, a new connection then failed after 9-10 s where asking again a
    moment later would have resolved. A name that does not exist (`EAI_NONAME`) fails at once,
    as before."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await asyncpg.connect(*args, timeout=max(0.001, deadline - loop.time()), **kwargs)
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_AGAIN or loop.time() + _RESOLVE_RETRY_S >= deadline:
                raise
            log.warning("database host name did not resolve for now (%s); asking again", exc)
            await asyncio.sleep(_RESOLVE_RETRY_S)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 10.0,
    connect_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool whose every query has a timeout, so a hung server never hangs a request.
    `connect_timeout` bounds each new connection, name resolution included (default
    `CONNECT_TIMEOUT_S`)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout,
        max_inactive_connection_lifetime=300,
        connect=connect_resolving_again,
    )
    assert pool is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
    return pool


async def ping(pool: asyncpg.Pool) -> None:
    await pool.fetchval("SELECT 1")


def migration_files(target: MigrationTarget) -> list[Path]:
    return sorted((MIGRATIONS_DIR / target).glob("*.sql"))


async def apply_migrations(dsn: str, target: MigrationTarget) -> list[str]:
    """Apply the pending migrations of `target` to the database at `dsn`; returns their names."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       target TEXT NOT NULL, name TEXT NOT NULL,
                       applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                       PRIMARY KEY (target, name))"""
            )
            done = {
                r["name"]
                for r in await conn.fetch("SELECT name FROM schema_migrations WHERE target = $1", target)
            }
            for path in migration_files(target):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (target, name) VALUES ($1, $2)", target, path.name
                    )
                log.info("applied migration %s/%s", target, path.name)
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    return applied


async def ensure_database(server_dsn: str, name: str) -> None:
    """Create database `name` on the server of `server_dsn` when it does not exist."""
    conn: asyncpg.Connection = await asyncpg.connect(server_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{_check_identifier(name)}"')
    finally:
        await conn.close()


async def drop_database(server_dsn: str, name: str) -> None:
    conn: asyncpg.Connection = await asyncpg.connect(server_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_check_identifier(name)}" WITH (FORCE)')
    finally:
        await conn.close()


def _check_identifier(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_-" for c in name) or len(name) > 63:
        raise ValueError(f"refusing unsafe database name {name!r}")
    return name


def with_database(dsn: str, database: str) -> str:
    """The same server as `dsn`, another database (keeps host, port, user and query)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))
