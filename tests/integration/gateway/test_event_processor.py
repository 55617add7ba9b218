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
from aiokafka import AIOKafkaProducer, TopicPartition

from services.gateway.event_processor.service import ProcessorService
from services.gateway.event_processor.sink import EventSink, StoreOutcome
from services.gateway.settings import GatewaySettings
from shared.breaker import BreakerRegistry
from shared.db import create_pool
from shared.event_fastpath import record_of
from shared.event_store import store_event_rows
from shared.event_vocabulary import get_event_limits
from shared.kafka import create_consumer, create_producer, ensure_topics
from tests.factories import event_dict
from tests.hostile import EITHER, STORED, hostile_messages
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
        "oversized": orjson.dumps(event_dict(notes="x" * 70_000)),
        "unstorable_text": orjson.dumps(event_dict(person_id="nul\u0000byte")),
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


async def read_dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list[Any]:
    consumer = create_consumer(
        bootstrap, topic, group_id=topic + "-check", session_timeout_ms=2000, heartbeat_interval_ms=300
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(records) < expected:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_hostile_corpus_every_message_is_stored_or_dead_lettered_and_the_partition_moves_on(
    running: ProcessorService, database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    """One partition, hostile messages between valid ones: nothing stalls, nothing is lost."""
    from shared.events import EventParseError, parse_event_bytes

    corpus = hostile_messages()
    verdicts: dict[str, str] = {}
    for message in corpus:
        try:
            parse_event_bytes(message.value or b"")
            verdicts[message.name] = STORED
        except EventParseError as exc:
            verdicts[message.name] = exc.reason
        if message.expect != EITHER:
            assert verdicts[message.name] == message.expect, message.name
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    good: list[dict[str, Any]] = []
    producer = await producer_for(kafka_bootstrap, topic_name)
    try:
        for i, message in enumerate(corpus):
            event = event_dict()
            good.append(event)
            await producer.send(topic_name, orjson.dumps(event), key=b"g", partition=0)
            await producer.send(
                topic_name,
                message.value,
                key=f"h{i}".encode(),
                partition=0,
                headers=[("traceparent", traceparent), ("corpus.name", message.name.encode())],
            )
        tail = [event_dict() for _ in range(3)]
        good.extend(tail)
        for event in tail:
            await producer.send(topic_name, orjson.dumps(event), key=b"g", partition=0)
        await producer.flush()
    finally:
        await producer.stop()

    should_store = [m for m in corpus if verdicts[m.name] == STORED]
    should_die = [m for m in corpus if verdicts[m.name] != STORED]
    assert await wait_rows(database_url, len(good) + len(should_store), timeout_s=60) == len(good) + len(
        should_store
    )
    dead = await read_dead_letters(kafka_bootstrap, topic_name + ".dlq", len(should_die))
    by_key = {record.key.decode(): record for record in dead}
    assert len(dead) == len(by_key) == len(should_die)
    for i, message in enumerate(corpus):
        record = by_key.get(f"h{i}")
        if verdicts[message.name] == STORED:
            assert record is None, message.name
            continue
        assert record is not None, message.name
        headers = dict(record.headers)
        assert headers["dlq.reason"].decode() == verdicts[message.name], message.name
        assert headers["traceparent"] == traceparent  # the original headers travel along
        assert headers["corpus.name"].decode() == message.name
        if "dlq.truncated" in headers:  # too large to dead-letter whole: its first bytes, marked
            assert int(headers["dlq.truncated"]) == len(message.value or b"")
            assert record.value == (message.value or b"")[: get_event_limits().max_event_bytes]
        else:
            assert record.value == (message.value or b"")
    near_limit = next(i for i, m in enumerate(corpus) if m.name == "near_kafka_limit")
    assert "dlq.truncated" in dict(by_key[f"h{near_limit}"].headers)
    conn = await asyncpg.connect(database_url)
    try:
        stored = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM access_events")}
        bounds = await conn.fetchrow("SELECT min(time) AS lo, max(time) AS hi FROM access_events")
    finally:
        await conn.close()
    assert {e["event_id"] for e in good} <= stored
    assert {m.event_id for m in should_store if m.event_id} <= stored
    assert bounds is not None
    assert bounds["lo"].year >= 1970
    assert bounds["hi"].year < 2100
    status = running.status()
    assert status.dead_lettered == len(should_die)
    assert status.stored == len(good) + len(should_store)


async def test_a_batch_with_a_hundred_long_facility_ids_is_stored_in_one_statement(
    database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    """NOTIFY's 8000-byte limit never fails the write: one statement, one bounded signal."""
    events = [event_dict(facility_id=f"facility-{i:03d}-" + "x" * 180) for i in range(100)]
    producer = await producer_for(kafka_bootstrap, topic_name)
    try:
        for event in events:
            await producer.send(topic_name, orjson.dumps(event), key=b"d", partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    listener = await asyncpg.connect(database_url)
    heard: list[str] = []
    await listener.add_listener("access_events_written", lambda *args: heard.append(args[3]))
    settings = processor_settings(database_url, kafka_bootstrap, topic_name)
    pool = await create_pool(database_url, min_size=0, max_size=2)
    service = ProcessorService(settings, pool, BreakerRegistry.from_dict({}).get("database"))
    service.start()
    try:
        assert await wait_rows(database_url, 100) == 100
        await eventually(lambda: sum(orjson.loads(p)["rows"] for p in heard) >= 100, 5)
    finally:
        await service.stop()
        await pool.close()
        await listener.close()
    payloads = [orjson.loads(p) for p in heard]
    # Stored as one batch (not event by event after a refused statement), signalled once.
    assert [p["rows"] for p in payloads] == [100]
    assert payloads[0]["facilities"] is None
    assert service.status().dead_lettered == 0


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


async def test_stop_during_an_outage_commits_no_batch_fetched_behind_the_held_one(
    database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    """The processor parses the next batch while one is being stored. Stopped while the
    database is down, it must commit neither the held batch nor the one parsed behind it:
    committing the later one would move the offsets past the events never stored."""
    link = CuttableLink(database_url)
    await link.cut()
    settings = processor_settings(
        link.dsn, kafka_bootstrap, topic_name, DATABASE_TIMEOUT=2, EVENT_PROCESSOR_BATCH_SIZE=10
    )
    pool = await create_pool(link.dsn, min_size=0, max_size=2, command_timeout=2, connect_timeout=1)
    registry = BreakerRegistry.from_dict({"breakers": {"database": {"failure_threshold": 2}}})
    events = [event_dict() for _ in range(60)]
    producer = await producer_for(kafka_bootstrap, topic_name)
    try:
        for event in events:
            await producer.send(topic_name, orjson.dumps(event), key=event["door_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    service = ProcessorService(settings, pool, registry.get("database"))
    service.start()
    try:
        await eventually(lambda: service.status().store_retries >= 2, 20)
        assert service.status().store_retries >= 2
    finally:
        await service.stop()
        await pool.close()
    assert await count_rows(database_url) == (0, 0)

    pool = await create_pool(database_url, min_size=0, max_size=2)
    again = ProcessorService(
        settings.model_copy(update={"database_url": database_url}),
        pool,
        BreakerRegistry.from_dict({}).get("database"),
    )
    again.start()
    try:
        assert await wait_rows(database_url, len(events), timeout_s=30) == len(events)
    finally:
        await again.stop()
        await pool.close()
    assert await count_rows(database_url) == (len(events), len(events))


async def _waiting_on_locks(conn: asyncpg.Connection, expected: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = 0
    while time.monotonic() < deadline:
        waiting = int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
        )
        if waiting >= expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{waiting} sessions waiting on a lock, expected {expected}")


async def _deadlocks(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    )


async def test_two_concurrent_stores_of_the_same_events_deadlock_and_both_batches_are_stored(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches in flight holding the same events (a redelivery) in opposite orders: a third
    transaction holds the middle event so that each store has inserted its half before they
    meet, then lets go; the stores wait on each other's keys, PostgreSQL aborts one (a
    deadlock), and the sink stores that batch again as a whole: every event stored once, none
    refused (so none would be dead-lettered), none stored one by one."""
    rows = [record_of(event_dict(event_id=f"overlap-{n:04d}")) for n in range(400)]
    forward, backward = rows, rows[::-1]
    pool = await create_pool(database_url, min_size=0, max_size=4)
    sink = EventSink(pool, BreakerRegistry.from_dict({}).get("database"))
    holder = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    one_by_one: list[int] = []
    original = sink._one_by_one

    async def spy(batch: Any) -> StoreOutcome:
        one_by_one.append(len(batch))
        return await original(batch)

    monkeypatch.setattr(sink, "_one_by_one", spy)
    try:
        deadlocks_before = await _deadlocks(watcher)
        holding = holder.transaction()
        await holding.start()
        await store_event_rows(holder, [rows[200]])
        stores = [asyncio.create_task(sink.store(forward)), asyncio.create_task(sink.store(backward))]
        await _waiting_on_locks(watcher, 2)  # both stores have reached the middle event
        await holding.rollback()
        outcomes = await asyncio.wait_for(asyncio.gather(*stores), 30)
        deadline = time.monotonic() + 15  # the statistics reach the view once the backend is idle
        deadlocks = await _deadlocks(watcher)
        while deadlocks == deadlocks_before and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            deadlocks = await _deadlocks(watcher)
    finally:
        await holder.close()
        await watcher.close()
        await pool.close()
    assert deadlocks > deadlocks_before  # the stores did meet and one was aborted
    assert [o.refused for o in outcomes] == [[], []]
    assert sum(o.inserted for o in outcomes) == len(rows)
    assert one_by_one == []
    assert await count_rows(database_url) == (len(rows), len(rows))


async def test_redelivered_events_in_consecutive_batches_stored_at_once_are_stored_exactly_once(
    database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    """Each group of ten events is sent twice in a row, the second time reversed: with batches
    of ten and two stores in flight, consecutive batches holding the same events are stored
    concurrently. Every event ends up stored once, the copies count as duplicates, nothing is
    dead-lettered and every offset is committed."""
    settings = processor_settings(
        database_url,
        kafka_bootstrap,
        topic_name,
        EVENT_PROCESSOR_BATCH_SIZE=10,
        EVENT_PROCESSOR_STORES_IN_FLIGHT=2,
    )
    events = [event_dict() for _ in range(300)]
    producer = await producer_for(kafka_bootstrap, topic_name)
    try:
        for start in range(0, len(events), 10):
            group = events[start : start + 10]
            for event in [*group, *group[::-1]]:
                await producer.send(topic_name, orjson.dumps(event), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    pool = await create_pool(database_url, min_size=0, max_size=4)
    service = ProcessorService(settings, pool, BreakerRegistry.from_dict({}).get("database"))
    service.start()
    try:
        await eventually(lambda: service.status().stored + service.status().duplicates >= 2 * len(events), 60)
        status = service.status()
    finally:
        await service.stop()
        await pool.close()
    assert status.stores_in_flight == 2
    assert (status.stored, status.duplicates, status.dead_lettered) == (len(events), len(events), 0)
    assert status.commit_failures == 0
    assert await count_rows(database_url) == (len(events), len(events))
    consumer = create_consumer(kafka_bootstrap, group_id=topic_name + "-processor")
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic_name, 0))
    finally:
        await consumer.stop()
    assert committed == 2 * len(events)
