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


async def test_add_many_stops_at_the_first_refused_message_and_says_why(coalescer: BatchCoalescer) -> None:
    messages = [(b"door-1", SMALL), (b"door-2", SMALL), (b"door-1", b"x" * PRODUCER_REQUEST_BYTES)]
    delivered, refused = coalescer.add_many([*messages, (b"door-3", SMALL)], [("h", b"v")])
    assert len(delivered) == 2
    assert isinstance(refused, MessageSizeTooLargeError)
    # What was added before the refusal is in the partition's open batch, and is being sent.
    assert coalescer.add(b"door-1", SMALL, [("h", b"v")]) is delivered[0]
    flushers = [state.flusher for state in coalescer._state.values() if state.flusher is not None]
    assert flushers


@pytest.mark.parametrize("headers", [[], [("received_at", b"1" * 13)], [("ü" * 40, b"v" * 3000)] * 3])
async def test_the_size_bound_leaves_every_message_on_the_side_of_a_quarter_batch_the_estimate_puts_it(
    coalescer: BatchCoalescer, headers: list[tuple[str, bytes]]
) -> None:
    """Messages skip the exact estimate only when a bound of their size is within a quarter of a
    batch: around that edge, each travels alone exactly when its estimate says it is over."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    quarter = PRODUCER_BATCH_BYTES // 4
    for length in range(quarter - 400, quarter + 10, 7):
        value = b"x" * length
        over = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"door-1", value, headers) > quarter
        fresh = BatchCoalescer(coalescer.producer, "events", [0])  # an empty batch to join
        try:
            before = fresh.add(b"door-1", SMALL, headers)
            this = fresh.add(b"door-1", value, headers)
            assert (this is not before) == over, length
        finally:
            await fresh.close()
