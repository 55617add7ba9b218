"""Which batch each message joins (`BatchCoalescer.add` hands back its batch's future); no broker
is needed to see it, and the sends that fail for want of one settle every future."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from services.gateway.coalescer import BatchCoalescer
from shared.kafka import PRODUCER_BATCH_BYTES, PRODUCER_REQUEST_BYTES

SMALL = b"x" * 200


@pytest.fixture
async def coalescer() -> AsyncIterator[BatchCoalescer]:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=PRODUCER_BATCH_BYTES)
    coalescer = BatchCoalescer(producer, "events", [0, 1, 2, 3])
    yield coalescer
    await coalescer.close()
    await producer.stop()


async def test_messages_of_a_partition_share_its_open_batch(coalescer: BatchCoalescer) -> None:
    first = coalescer.add(b"door-1", SMALL, [])
    second = coalescer.add(b"door-1", SMALL, [])
    assert first is second
    other = next(
        f"door-{n}".encode()
        for n in range(2, 50)
        if coalescer.partition_of(f"door-{n}".encode()) != coalescer.partition_of(b"door-1")
    )
    assert coalescer.add(other, SMALL, []) is not first


async def test_a_message_over_a_quarter_of_a_batch_travels_alone(coalescer: BatchCoalescer) -> None:
    before = coalescer.add(b"door-1", SMALL, [])
    big = coalescer.add(b"door-1", b"x" * (PRODUCER_BATCH_BYTES // 4 + 1), [])
    after = coalescer.add(b"door-1", SMALL, [])
    assert big is not before
    assert after is not big
    assert after is not before


async def test_a_message_over_the_request_size_is_refused_and_nothing_is_added(
    coalescer: BatchCoalescer,
) -> None:
    with pytest.raises(MessageSizeTooLargeError):
        coalescer.add(b"door-1", b"x" * PRODUCER_REQUEST_BYTES, [])
    assert coalescer.add(b"door-1", SMALL, []) is coalescer.add(b"door-1", SMALL, [])


async def test_closing_settles_every_waiting_batch(coalescer: BatchCoalescer) -> None:
    futures = [coalescer.add(f"door-{n}".encode(), SMALL, []) for n in range(20)]
    await coalescer.close()
    assert all(future.done() and future.exception() is not None for future in futures)
