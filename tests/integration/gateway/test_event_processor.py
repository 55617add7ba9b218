"""The event processor against a real broker and PostgreSQL: dead letters, database outage, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.gateway.event_processor.service import ProcessorService
from services.gateway.settings import GatewaySettings
from shared.breaker import BreakerRegistry
from shared.db import create_pool
from shared.kafka import create_consumer, create_producer, ensure_topics
from tests.factories import event_dict
from tests.integration.gateway.conftest import CuttableLink

pytestmark = pytest.mark.integration


def processor_settings(database_url: str, bootstrap: str, topic: str, **extra: Any) -> GatewaySettings:
    return GatewaySettings(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        ACCESS_EVENTS_TOPIC=topic,
        ACCESS_EVENTS_DLQ_TOPIC=topic + ".dlq",
        ACCESS_EVENTS_PARTITIONS=2,
        EVENT_PROCESSOR_GROUP_ID=topic + "-processor",
        EVENT_PROCESSOR_MAX_MESSAGE_BYTES=2048,
        EVENT_PROCESSOR_RETRY_BACKOFF_MAX=0.5,
        KAFKA_SESSION_TIMEOUT_MS=2000,
        KAFKA_HEARTBEAT_INTERVAL_MS=300,
        TRACING_ENABLED=False,
        **extra,
    )


async def producer_for(bootstrap: str, topic: str) -> AIOKafkaProducer:
    await ensure_topics(bootstrap, {topic: 2, topic + ".dlq": 1})
    producer = create_producer(bootstrap)
    await producer.start()
    return producer


async def count_rows(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM access_events")
        assert row is not None
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


async def wait_rows(dsn: str, expected: int, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    n = -1
    while time.monotonic() < deadline:
        n, _ = await count_rows(dsn)
        if n >= expected:
            return n
        await asyncio.sleep(0.1)
    return n


async def eventually(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> None:
    for _ in range(int(timeout_s / interval_s)):
        if predicate():
            return
        await asyncio.sleep(interval_s)


@pytest.fixture
async def running(
    database_url: str, kafka_bootstrap: str, topic_name: str
) -> AsyncIterator[ProcessorService]:
    settings = processor_settings(database_url, kafka_bootstrap, topic_name)
    pool = await create_pool(database_url, min_size=0, max_size=2)
    registry = BreakerRegistry.from_dict({"breakers": {"database": {"failure_threshold": 2}}})
    service = ProcessorService(settings, pool, registry.get("database"))
    service.start()
    try:
        yield service
    finally:
        await service.stop()
        await pool.close()


async def test_malformed_messages_of_every_kind_are_dead_lettered_and_valid_ones_stored(
    running: ProcessorService, database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    good = [event_dict() for _ in range(4)]
    malformed: dict[str, bytes | None] = {
        "invalid_json": b"{not json",
        "not_an_object": b"[1, 2, 3]",
        "missing_field": orjson.dumps({k: v for k, v in event_dict().items() if k != "person_id"}),
        "invalid_timestamp": orjson.dumps(event_dict(timestamp="the day after tomorrow")),
        "invalid_field": orjson.dumps(event_dict(access_result="Maybe")),
        "oversized": orjson.dumps(event_dict(notes="x" * 4096)),
        "rejected_by_database": orjson.dumps(event_dict(person_id="nul\u0000byte")),
        "empty": None,
    }
    producer = await producer_for(kafka_bootstrap, topic_name)
    try:
        await producer.send_and_wait(topic_name, orjson.dumps(good[0]), key=b"d")
        for reason, value in malformed.items():
            await producer.send_and_wait(topic_name, value, key=reason.encode(), partition=0)
        for event in good[1:]:
            await producer.send_and_wait(topic_name, orjson.dumps(event), key=b"d")
    finally:
        await producer.stop()

    assert await wait_rows(database_url, len(good)) == len(good)
    consumer = create_consumer(
        kafka_bootstrap,
        topic_name + ".dlq",
        group_id=topic_name + "-dlq-check",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    dead: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(dead) < len(malformed):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    dead[record.key.decode()] = record
    finally:
        await consumer.stop()
    assert set(dead) == set(malformed)
    for key, record in dead.items():
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["dlq.reason"] == key, headers
        assert headers["dlq.error"]
        assert headers["dlq.source.topic"] == topic_name
        assert headers["dlq.source.partition"] == "0"
        assert int(headers["dlq.source.offset"]) >= 0
        assert record.value == (malformed[key] or b"")  # the original bytes, untouched
    assert running.status().dead_lettered == len(malformed)
    assert running.status().stored == len(good)


async def test_database_outage_pauses_commits_nothing_and_resumes(
    database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    link = CuttableLink(database_url)
    await link.open()
    settings = processor_settings(link.dsn, kafka_bootstrap, topic_name, DATABASE_TIMEOUT=2)
    pool = await create_pool(link.dsn, min_size=0, max_size=2, command_timeout=2, connect_timeout=1)
    registry = BreakerRegistry.from_dict(
        {
            "breakers": {
                "database": {
                    "failure_threshold": 2,
                    "wait_duration_in_open_state": 0.5,
                    "permitted_calls_in_half_open_state": 1,
                }
            }
        }
    )
    breaker = registry.get("database")
    service = ProcessorService(settings, pool, breaker)
    service.start()
    producer = await producer_for(kafka_bootstrap, topic_name)
    try:
        first = [event_dict() for _ in range(50)]
        for event in first:
            await producer.send(topic_name, orjson.dumps(event), key=event["door_id"].encode())
        await producer.flush()
        assert await wait_rows(database_url, 50) == 50

        await link.cut()
        second = [event_dict() for _ in range(50)]
        for event in second:
            await producer.send(topic_name, orjson.dumps(event), key=event["door_id"].encode())
        await producer.flush()
        await eventually(lambda: service.status().paused and breaker.snapshot()["open"] >= 1, 15)
        status = service.status()
        assert status.paused is True
        assert status.store_retries >= 2
        assert breaker.snapshot()["open"] >= 1
        assert await count_rows(database_url) == (50, 50)
        await asyncio.sleep(1.0)  # still down: nothing stored, nothing lost
        assert await count_rows(database_url) == (50, 50)

        await link.open()
        assert await wait_rows(database_url, 100) == 100
        assert await count_rows(database_url) == (100, 100)
        await eventually(lambda: not service.status().paused, 5)
        assert service.status().paused is False
        assert breaker.state == "closed"
    finally:
        await producer.stop()
        await service.stop()
        await pool.close()
        await link.cut()

    # Nothing was committed past the stored events: a fresh processor of the same group has
    # nothing left to store and the table holds each event once.
    pool = await create_pool(database_url, min_size=0, max_size=2)
    again = ProcessorService(settings.model_copy(update={"database_url": database_url}), pool, breaker)
    again.start()
    try:
        await asyncio.sleep(3)
        assert again.status().stored == 0
    finally:
        await again.stop()
        await pool.close()
    assert await count_rows(database_url) == (100, 100)


async def test_graceful_stop_drains_and_commits(
    database_url: str, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    settings = processor_settings(database_url, kafka_bootstrap, topic_name, EVENT_PROCESSOR_BATCH_SIZE=200)
    producer = await producer_for(kafka_bootstrap, topic_name)
    events = [event_dict() for _ in range(2000)]
    try:
        for event in events:
            await producer.send(topic_name, orjson.dumps(event), key=event["door_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    registry = BreakerRegistry.from_dict({})
    pool = await create_pool(database_url, min_size=0, max_size=2)
    service = ProcessorService(settings, pool, registry.get("database"))
    service.start()
    try:
        await eventually(lambda: service.status().stored > 0, 20, interval_s=0.01)
    finally:
        await service.stop()
    stored_first = (await count_rows(database_url))[0]
    assert stored_first == service.status().stored
    # A second run resumes at the committed offsets: it stores the rest, never re-reads stored ones.
    service = ProcessorService(settings, pool, registry.get("database"))
    service.start()
    try:
        assert await wait_rows(database_url, len(events)) == len(events)
        assert service.status().duplicates == 0
    finally:
        await service.stop()
        await pool.close()
    assert await count_rows(database_url) == (len(events), len(events))
