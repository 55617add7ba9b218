"""Session-wide real servers and per-test isolation (own database, topic, group, key prefix)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from shared.db import apply_migrations, drop_database, ensure_database, with_database
from tools.dev.servers import KafkaProvider, PostgresProvider, RedisProvider, unavailable, unique_name

pytest_plugins = ["tools.dev.fleet"]


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """A PostgreSQL server (maintenance database): env, machine, or embedded."""
    provider = PostgresProvider()
    try:
        yield provider.get()
    except Exception as exc:
        unavailable(f"PostgreSQL ({exc})")
    finally:
        provider.close()


@pytest.fixture(scope="session")
def make_database(pg_server_dsn: str) -> Iterator[Callable[..., str]]:
    """Factory: a new, migrated database on the test server; all are dropped at session end."""
    created: list[str] = []

    def make(target: str = "primary", migrate: bool = True) -> str:
        name = unique_name("sentinel_test")
        asyncio.run(ensure_database(pg_server_dsn, name))
        created.append(name)
        dsn = with_database(pg_server_dsn, name)
        if migrate:
            asyncio.run(apply_migrations(dsn, target))  # type: ignore[arg-type]
        return dsn

    yield make
    for name in created:
        asyncio.run(drop_database(pg_server_dsn, name))


@pytest.fixture
def database_url(make_database: Callable[..., str]) -> str:
    """A fresh primary database (access_events) for one test."""
    return make_database("primary")


@pytest.fixture
def replica_url(make_database: Callable[..., str]) -> str:
    """A fresh replication target database for one test."""
    return make_database("replica")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    provider = KafkaProvider()
    try:
        yield provider.get()
    except Exception as exc:
        unavailable(f"Kafka broker ({exc})")
    finally:
        provider.close()


@pytest.fixture
def topic_name() -> str:
    return unique_name("access-events")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    provider = RedisProvider()
    url = provider.get()
    if not url:
        unavailable("Redis")
    assert url
    yield url
    provider.close()


@pytest.fixture
def redis_prefix() -> str:
    """Every test writes under its own key prefix, so tests never see each other's keys."""
    return unique_name("test")
