"""What the publisher puts on the topic: each key on the partition the default partitioner
picks, request order kept within a key across full producer batches, the header on every message."""

from __future__ import annotations

import orjson
from aiokafka.partitioner import DefaultPartitioner

from services.gateway.event_processor.observe import RECEIVED_AT_HEADER
from services.gateway.publisher import EventPublisher, Message
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
