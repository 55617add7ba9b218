"""What the publisher puts on the topic: each key on the partition the default partitioner
picks, request order kept within a key across full producer batches, the header on every message."""

from __future__ import annotations

import asyncio

import orjson
from aiokafka.partitioner import DefaultPartitioner

from services.gateway.event_processor.observe import RECEIVED_AT_HEADER
from services.gateway.publisher import BrokerUnavailable, EventPublisher, Message
from tests.integration.gateway.test_ingest import consume_all


async def test_each_key_lands_where_send_would_put_it_in_request_order(
    kafka_bootstrap: str, topic_name: str
) -> None:
    publisher = EventPublisher(kafka_bootstrap, topic_name, 4, timeout_s=10)
    # 30 doors, 600 messages of ~2 KB: 1.2 MB in all, so each partition's producer batch
    # (256 KiB) fills and is continued in another.
    padding = "x" * 2000
    messages = [
        Message(f"d{n % 30}".encode(), orjson.dumps({"door": f"d{n % 30}", "n": n, "pad": padding}))
        for n in range(600)
    ]
    try:
        assert await publisher.publish(messages) == 600
    finally:
        await publisher.close()
    records = await consume_all(kafka_bootstrap, topic_name, 600)
    assert len(records) == 600
    choose = DefaultPartitioner()
    seen: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.partition == choose(record.key, [0, 1, 2, 3], [0, 1, 2, 3])
        assert any(name == RECEIVED_AT_HEADER for name, _ in record.headers)
        seen.setdefault(record.key, []).append(orjson.loads(record.value)["n"])
    assert len(seen) == 30
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), key  # per door, the request's order
        assert len(numbers) == 20


async def test_concurrent_requests_each_get_their_own_exact_answer(
    kafka_bootstrap: str, topic_name: str
) -> None:
    """50 requests at once share the partitions' batches: every event is on the topic once, on
    its key's partition, and each request's events for a door keep the request's order."""
    publisher = EventPublisher(kafka_bootstrap, topic_name, 4, timeout_s=10)
    requests = [
        [Message(f"d{(r + n) % 7}".encode(), orjson.dumps({"r": r, "n": n})) for n in range(40)]
        for r in range(50)
    ]
    try:
        answers = await asyncio.gather(*(publisher.publish(batch) for batch in requests))
        # A request after the others still gets its answer (each partition's sender restarts).
        late = [Message(b"d1", orjson.dumps({"r": 50, "n": n})) for n in range(3)]
        assert await publisher.publish(late) == 3
    finally:
        await publisher.close()
    assert answers == [40] * 50
    records = await consume_all(kafka_bootstrap, topic_name, 2003)
    assert len(records) == 2003
    choose = DefaultPartitioner()
    seen: dict[tuple[int, bytes], list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.partition == choose(record.key, [0, 1, 2, 3], [0, 1, 2, 3])
        body = orjson.loads(record.value)
        seen.setdefault((body["r"], record.key), []).append(body["n"])
    assert sum(len(numbers) for numbers in seen.values()) == 2003
    for numbers in seen.values():
        assert numbers == sorted(numbers)
        assert len(numbers) == len(set(numbers))


async def test_a_publisher_closed_mid_request_reports_the_request_never_loses_it(
    kafka_bootstrap: str, topic_name: str
) -> None:
    publisher = EventPublisher(kafka_bootstrap, topic_name, 1, timeout_s=5)
    assert await publisher.publish([Message(b"d", b"{}")]) == 1
    request = [Message(b"d", b"{}") for _ in range(10)]
    pending: asyncio.Task[int] = asyncio.create_task(publisher.publish(request))
    await asyncio.sleep(0)
    await publisher.close()
    try:
        outcome: object = await pending
    except BrokerUnavailable as exc:
        outcome = exc
    # Either its batch left before the close (acknowledged) or the request is told, never silent.
    assert outcome == 10 or isinstance(outcome, BrokerUnavailable), outcome
