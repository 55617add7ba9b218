"""What the gateway benchmarks share: servers, a fresh database and topic, event bytes, processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import asyncpg
import orjson
import psutil

from shared.db import MigrationTarget, apply_migrations, drop_database, ensure_database, with_database
from shared.kafka import create_producer, ensure_topics
from tools.dev.fleet import ServiceProcess
from tools.dev.servers import KafkaProvider, PostgresProvider, unique_name


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """(PostgreSQL server DSN, Kafka bootstrap): the environment's, the machine's, or embedded."""
    pg, kafka = PostgresProvider(), KafkaProvider()
    try:
        yield pg.get(), kafka.get()
    finally:
        kafka.close()
        pg.close()


@contextlib.contextmanager
def fresh_database(server_dsn: str, kind: MigrationTarget = "primary") -> Iterator[str]:
    """A new database with the `kind` schema (`primary`, or `replica`: the replicator's target),
    dropped afterwards."""
    name = unique_name("bench_gateway")
    asyncio.run(ensure_database(server_dsn, name))
    dsn = with_database(server_dsn, name)
    asyncio.run(apply_migrations(dsn, kind))
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(server_dsn, name))


def event_bytes(n: int, *, timestamp: datetime | None = None, seed: int = 1) -> tuple[bytes, bytes]:
    """(key, value) of one plausible wire-format event."""
    rng = random.Random(seed * 1_000_003 + n)
    door = f"d{rng.randrange(200)}"
    value = orjson.dumps(
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
            "person_id": f"p{rng.randrange(5000)}",
            "door_id": door,
            "badge_id": f"b{rng.randrange(5000)}",
            "access_result": "Granted" if rng.random() < 0.9 else "Denied",
            "badge_status": "Valid",
            "facility_id": f"f{rng.randrange(3)}",
        }
    )
    return door.encode(), value


async def produce(bootstrap: str, topic: str, count: int, *, partitions: int = 4) -> float:
    """Fill `topic` with `count` events as fast as the producer goes; returns seconds taken."""
    await ensure_topics(bootstrap, {topic: partitions, topic + ".dlq": 1})
    producer = create_producer(bootstrap, linger_ms=20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        now = datetime.now(UTC)
        for n in range(count):
            key, value = event_bytes(n, timestamp=now)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def count_rows(dsn: str, table: str = "access_events") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


@contextlib.contextmanager
def processor_process(dsn: str, bootstrap: str, topic: str, **env: str) -> Iterator[ServiceProcess]:
    with TemporaryDirectory(prefix="bench-processor-") as logs:
        process = ServiceProcess(
            "services.gateway.event_processor",
            {
                "DATABASE_URL": dsn,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "ACCESS_EVENTS_TOPIC": topic,
                "ACCESS_EVENTS_DLQ_TOPIC": topic + ".dlq",
                "ACCESS_EVENTS_PARTITIONS": "4",
                "EVENT_PROCESSOR_GROUP_ID": topic + "-processor",
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
                "LOG_LEVEL": "WARNING",
                **env,
            },
            Path(logs),
        )
        process.start()
        try:
            yield process
        finally:
            process.stop()


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def usage(processes: list[psutil.Process]) -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a core) of these processes' threads.

    The second comes from the scheduler (`/proc/<pid>/task/<tid>/schedstat`): on a busy machine
    it shows whether a process was short of work or short of CPU."""
    cpu = waited = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            times = proc.cpu_times()
            cpu += times.user + times.system
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    waited += int((task / "schedstat").read_text().split()[1]) / 1e9
    return cpu, waited


def pin(processes: list[psutil.Process], cpus: set[int]) -> None:
    """Keep these processes on `cpus` (a process gone meanwhile is skipped)."""
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.cpu_affinity(sorted(cpus))


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = [
    "count_rows",
    "cpu_count",
    "event_bytes",
    "fresh_database",
    "pin",
    "process_tree",
    "processor_process",
    "produce",
    "servers",
    "unique_name",
    "usage",
]
