"""Concurrent requests' events coalesced into one producer batch per partition.

Hand-written because aiokafka offers two ways to produce and neither fits many concurrent small
requests: `send` costs a future, a partitioner call (murmur2 in Python) and a metadata object per
message (about a third of the gateway's CPU per event, sampled under load), and `send_batch`
queues at most one pending batch per partition, so requests that each send their own batches wait
on each other one produce round-trip at a time. Here every request appends its messages to the
partition's open batch (the record encoding is aiokafka's own builder), and one flusher per
partition hands the open batch to `send_batch` as soon as the previous one has left for the
broker: while a batch travels, the next one fills with whatever every request added meanwhile.
Each request then waits on one future per partition it touched, not per message.

What `send` would do is kept: the key picks the partition as the default partitioner does, a
request's messages stay in order within their partition (and so within a door), a message over
the producer's request size is refused before anything after it is added, and a batch's outcome
(acknowledged, refused, or not known in time) is the outcome of every message in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from shared.kafka import PRODUCER_BATCH_BYTES, PRODUCER_REQUEST_BYTES

# Keys seen (door ids) to their partition: doors are few, murmur2 in Python is not cheap.
_PARTITION_CACHE_LIMIT = 65_536
_ALONE_BYTES = PRODUCER_BATCH_BYTES // 4
# Bounds of a record's size beyond its key, value and headers' bytes (Kafka's record format v2):
# the batch header (61 bytes), the record's length, attributes, timestamp and offset deltas, key
# and value lengths and header count (varints, 10 bytes at most each), and per header the
# lengths of its name and value.
_BATCH_OVERHEAD = 61 + 7 * 10
_FIELD_BOUND = 2 * 10


@dataclass
class _OpenBatch:
    builder: Any  # aiokafka's BatchBuilder
    delivered: asyncio.Future[object]
    count: int = 0


@dataclass
class _Partition:
    sealed: deque[_OpenBatch] = field(default_factory=deque)
    open: _OpenBatch | None = None
    flusher: asyncio.Task[None] | None = None


class BatchCoalescer:
    """Appends messages to per-partition batches shared by every caller, and sends them."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: Sequence[int]) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = sorted(partitions)
        self._state = {p: _Partition() for p in self.partitions}
        self._cache: dict[bytes, int] = {}

    def partition_of(self, key: bytes) -> int:
        """The default partitioner's choice for `key` (murmur2, as Java clients and `send`)."""
        partition = self._cache.get(key)
        if partition is None:
            partition = self.partitions[(murmur2(key) & 0x7FFFFFFF) % len(self.partitions)]
            if len(self._cache) >= _PARTITION_CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = partition
        return partition

    def add(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[object]:
        """Append one message; its batch's delivery future. Raises MessageSizeTooLargeError for a
        message the producer would refuse (nothing is added then)."""
        delivered, refused = self.add_many(((key, value),), headers)
        if refused is not None:
            raise refused
        return delivered[0]

    def add_many(
        self, messages: Iterable[tuple[bytes, bytes]], headers: list[tuple[str, bytes]]
    ) -> tuple[list[asyncio.Future[object]], MessageSizeTooLargeError | None]:
        """Append messages in order, each with `headers`: the delivery future of each message
        added (its batch's), and the refusal of the first message the producer would refuse
        (None when every one was added; nothing after a refused one is added).

        One call per request: what is the same for every message (the bound of the headers'
        size, the lookups) is found once, and each partition's flusher is started once."""
        delivered: list[asyncio.Future[object]] = []
        touched: set[int] = set()
        states = self._state
        cache = self._cache
        estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
        # A bound of a message's size in a batch, beyond its key and value: the batch header,
        # the record's own fields (varints of at most 10 bytes each) and every header. A message
        # whose bound is within a quarter of a batch is neither alone nor over the request size,
        # so only larger ones need the exact estimate.
        overhead = _BATCH_OVERHEAD + sum(_FIELD_BOUND + len(name.encode()) + len(v) for name, v in headers)
        small = _ALONE_BYTES - overhead
        try:
            for key, value in messages:
                if len(key) + len(value) <= small:
                    alone = False
                else:
                    size = estimate(key, value, headers)
                    if size > PRODUCER_REQUEST_BYTES:  # what `send` refuses
                        return delivered, MessageSizeTooLargeError(
                            f"the message is {size} bytes, over the producer's request size"
                        )
                    # A message over a quarter of a batch travels in a batch of its own, so a
                    # broker that refuses it for its size refuses no other caller's events with it.
                    alone = size > _ALONE_BYTES
                partition = cache.get(key)
                if partition is None:
                    partition = self.partition_of(key)
                state = states[partition]
                if alone and state.open is not None:
                    self._seal(state)
                batch = state.open or self._start(state)
                if batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    self._seal(state)
                    batch = self._start(state)
                    # A fresh batch takes any one message (aiokafka always adds the first).
                    if batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        return delivered, MessageSizeTooLargeError(
                            f"the message of {estimate(key, value, headers)} bytes fits no batch"
                        )
                batch.count += 1
                if alone:
                    self._seal(state)
                touched.add(partition)
                delivered.append(batch.delivered)
        finally:
            for partition in touched:
                state = states[partition]
                if state.flusher is None or state.flusher.done():
                    state.flusher = asyncio.get_running_loop().create_task(self._flush(partition, state))
        return delivered, None

    def _start(self, state: _Partition) -> _OpenBatch:
        state.open = _OpenBatch(self.producer.create_batch(), asyncio.get_running_loop().create_future())
        return state.open

    @staticmethod
    def _seal(state: _Partition) -> None:
        if state.open is not None and state.open.count:
            state.sealed.append(state.open)
        state.open = None

    async def _flush(self, partition: int, state: _Partition) -> None:
        """Send the partition's batches in order; `send_batch` waits until the previous one has
        left for the broker, and meanwhile the open batch keeps filling."""
        while True:
            if not state.sealed:
                self._seal(state)
            if not state.sealed:
                return
            batch = state.sealed.popleft()
            try:
                sent = await self.producer.send_batch(batch.builder, self.topic, partition=partition)
            except asyncio.CancelledError:
                # Closed while waiting for the previous batch to leave: this one was never sent.
                _settle(batch.delivered, ConnectionError("the producer was closed"))
                raise
            except Exception as exc:  # handed to every caller of the batch, whatever it is
                _settle(batch.delivered, exc)
                continue
            sent.add_done_callback(lambda done, target=batch.delivered: _relay(done, target))

    async def close(self) -> None:
        """Stop the flushers; batches not yet handed to the producer fail as not sent."""
        for state in self._state.values():
            if state.flusher is not None and not state.flusher.done():
                state.flusher.cancel()
                with contextlib.suppress(BaseException):
                    await state.flusher
            self._seal(state)
            while state.sealed:
                _settle(state.sealed.popleft().delivered, ConnectionError("the producer was closed"))


def _relay(done: asyncio.Future[object], target: asyncio.Future[object]) -> None:
    if done.cancelled():
        _settle(target, ConnectionError("the batch was cancelled"))
    elif (failure := done.exception()) is not None:
        _settle(target, failure)
    elif not target.done():
        target.set_result(done.result())


def _settle(target: asyncio.Future[object], failure: BaseException) -> None:
    if not target.done():
        target.set_exception(failure)
        # Callers may have given up waiting (timeout): the failure is theirs to read, not the loop's.
        target.exception()
