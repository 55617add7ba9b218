"""Several stores in flight, offsets committed in order: the processor's loop against a scripted
consumer and sink, so each store can be made to end, fail or overlap exactly when a test says."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from services.gateway.event_processor.processor import EventProcessor, ProcessorTuning
from services.gateway.event_processor.sink import CONFLICT_RETRIES, EventSink, StoreOutcome, holds_batch
from shared.breaker import BreakerRegistry
from shared.event_fastpath import EventRow
from tests.factories import event_dict

TOPIC = "events"


def record(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = orjson.dumps(event_dict())
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=len(value),
        headers=[],
    )


class ScriptedConsumer:
    """Hands out the given fetches one per `getmany`, then nothing; records each commit."""

    def __init__(self, fetches: list[list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.fetches = list(fetches)
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused_parts: set[TopicPartition] = set()
        self.pauses = 0

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.fetches and not self.paused_parts:
            batch = self.fetches.pop(0)
            by_part: dict[TopicPartition, list[Any]] = {}
            for rec in batch:
                by_part.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
            return by_part
        await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}

    def pause(self, *parts: TopicPartition) -> None:
        self.pauses += 1
        self.paused_parts.update(parts)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_parts)

    def resume(self, *parts: TopicPartition) -> None:
        self.paused_parts.difference_update(parts)


class GatedSink:
    """Each store waits for its gate (one per call, in call order) and then does what the gate
    says: store the rows, or raise."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Future[BaseException | None]] = []
        self.started = asyncio.Event()
        self.running = 0
        self.most_running = 0
        self.stored: list[list[str]] = []

    def gate(self, index: int) -> asyncio.Future[BaseException | None]:
        while len(self.gates) <= index:
            self.gates.append(asyncio.get_running_loop().create_future())
        return self.gates[index]

    async def store(self, rows: Sequence[EventRow]) -> StoreOutcome:
        call = len(self.stored)
        self.stored.append([row[0] for row in rows])
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            failure = await self.gate(call)
        finally:
            self.running -= 1
        if failure is not None:
            raise failure
        return StoreOutcome(len(rows))


def processor(consumer: ScriptedConsumer, sink: Any, stores_in_flight: int = 2) -> EventProcessor:
    return EventProcessor(
        consumer=consumer,
        dlq_producer=None,  # no dead letters in these batches
        sink=sink,
        dlq_topic="events.dlq",
        tuning=ProcessorTuning(batch_size=3, flush_interval_ms=20),
        max_message_bytes=64 * 1024,
        retry_backoff_max_s=0.05,
        stores_in_flight=stores_in_flight,
    )


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    """Poll `predicate`: what it reads (a fake's counters) has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_a_later_batch_stored_first_is_committed_only_after_the_earlier_one() -> None:
    consumer = ScriptedConsumer([[record(0, 0), record(0, 1), record(0, 2)], [record(0, 3), record(1, 0)]])
    sink = GatedSink()
    proc = processor(consumer, sink)
    task = asyncio.create_task(proc.run())
    try:
        await until(lambda: sink.running == 2)  # both batches are being stored at once
        sink.gate(1).set_result(None)  # the later one ends first
        await asyncio.sleep(0.1)
        assert consumer.commits == []  # ... and waits for the earlier one
        sink.gate(0).set_result(None)
        await until(lambda: len(consumer.commits) == 2)
    finally:
        proc.stop()
        await asyncio.wait_for(task, 5)
    assert consumer.commits == [
        {TopicPartition(TOPIC, 0): 3},
        {TopicPartition(TOPIC, 0): 4, TopicPartition(TOPIC, 1): 1},
    ]
    assert sink.most_running == 2
    assert proc.stats.stored == 5


async def test_no_more_stores_run_at_once_than_configured() -> None:
    fetches = [[record(0, 3 * n + i) for i in range(3)] for n in range(6)]
    consumer = ScriptedConsumer(fetches)
    sink = GatedSink()
    proc = processor(consumer, sink, stores_in_flight=2)
    task = asyncio.create_task(proc.run())
    try:
        for n in range(6):
            await until(lambda n=n: len(sink.stored) > n)
            await asyncio.sleep(0.03)  # a third store would have started by now if it could
            assert sink.running <= 2
            sink.gate(n).set_result(None)
        await until(lambda: len(consumer.commits) == 6)
    finally:
        proc.stop()
        await asyncio.wait_for(task, 5)
    assert sink.most_running == 2
    assert [c[TopicPartition(TOPIC, 0)] for c in consumer.commits] == [3, 6, 9, 12, 15, 18]


async def test_a_failing_earlier_store_holds_every_later_commit_until_it_is_stored() -> None:
    consumer = ScriptedConsumer([[record(0, 0), record(0, 1), record(0, 2)], [record(1, 0), record(1, 1)]])
    sink = GatedSink()
    proc = processor(consumer, sink)
    task = asyncio.create_task(proc.run())
    try:
        await until(lambda: sink.running == 2)
        sink.gate(1).set_result(None)  # the later batch is stored
        sink.gate(0).set_result(ConnectionRefusedError("database down"))  # the earlier one fails
        await until(lambda: len(sink.stored) == 3)  # retried while paused
        assert proc.stats.paused
        assert consumer.pauses >= 1
        assert consumer.commits == []
        sink.gate(2).set_result(None)
        await until(lambda: len(consumer.commits) == 2)
    finally:
        proc.stop()
        await asyncio.wait_for(task, 5)
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 3}, {TopicPartition(TOPIC, 1): 2}]
    assert sink.stored[2] == sink.stored[0]  # the held batch itself was stored again
    assert not proc.stats.paused


async def test_stop_during_an_outage_commits_neither_the_held_batch_nor_a_stored_later_one() -> None:
    consumer = ScriptedConsumer([[record(0, 0), record(0, 1), record(0, 2)], [record(0, 3)]])
    sink = GatedSink()
    proc = processor(consumer, sink)
    task = asyncio.create_task(proc.run())
    await until(lambda: sink.running == 2)
    sink.gate(1).set_result(None)
    sink.gate(0).set_result(ConnectionRefusedError("database down"))
    await until(lambda: len(sink.stored) == 3)
    proc.stop()
    sink.gate(2).set_result(ConnectionRefusedError("still down"))  # the retry under way fails too
    await asyncio.wait_for(task, 5)
    assert consumer.commits == []
    assert sink.stored[1] != sink.stored[0]  # the later batch was stored, yet not committed


async def test_stop_stores_and_commits_every_batch_in_flight() -> None:
    consumer = ScriptedConsumer([[record(0, 0), record(0, 1), record(0, 2)], [record(0, 3), record(0, 4)]])
    sink = GatedSink()
    proc = processor(consumer, sink)
    task = asyncio.create_task(proc.run())
    await until(lambda: sink.running == 2)
    proc.stop()
    await asyncio.sleep(0.05)
    assert not task.done()  # it waits for both stores
    sink.gate(0).set_result(None)
    sink.gate(1).set_result(None)
    await asyncio.wait_for(task, 5)
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 3}, {TopicPartition(TOPIC, 0): 5}]


def deadlock() -> asyncpg.DeadlockDetectedError:
    return asyncpg.DeadlockDetectedError("deadlock detected")


async def test_the_sink_retries_a_batch_a_concurrent_store_aborted_as_a_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = EventSink(None, BreakerRegistry.from_dict({}).get("database"))  # type: ignore[arg-type]
    calls: list[int] = []

    async def store(rows: Sequence[EventRow]) -> int:
        calls.append(len(rows))
        if len(calls) <= 2:
            raise deadlock()
        return len(rows)

    monkeypatch.setattr(sink, "_store", store)
    rows = [(str(n),) for n in range(10)]
    outcome = await sink.store(rows)
    assert outcome == StoreOutcome(10)
    assert calls == [10, 10, 10]  # the whole batch each time, never one event at a time


async def test_a_conflict_that_persists_is_raised_for_the_processor_to_hold_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = EventSink(None, BreakerRegistry.from_dict({}).get("database"))  # type: ignore[arg-type]
    calls: list[int] = []

    async def store(rows: Sequence[EventRow]) -> int:
        calls.append(len(rows))
        raise deadlock()

    monkeypatch.setattr(sink, "_store", store)
    with pytest.raises(asyncpg.DeadlockDetectedError) as raised:
        await sink.store([(str(n),) for n in range(4)])
    assert calls == [4] * (CONFLICT_RETRIES + 1)
    assert holds_batch(raised.value)
    assert not holds_batch(asyncpg.UniqueViolationError("dup"))
    assert not holds_batch(asyncpg.DataError("bad value"))


class ImmediateConsumer(ScriptedConsumer):
    """Like aiokafka's: `getmany(timeout_ms=0)` with nothing to hand out returns without
    suspending; only a positive timeout waits."""

    def __init__(self) -> None:
        super().__init__([])
        self.timeouts: list[int] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.timeouts.append(timeout_ms)
        if timeout_ms > 0:
            await asyncio.sleep(timeout_ms / 1000)
        return {}


@pytest.mark.parametrize("flush_interval_ms", [1, 2, 50])
async def test_an_idle_processor_with_a_short_flush_interval_lets_the_event_loop_run(
    flush_interval_ms: int,
) -> None:
    consumer = ImmediateConsumer()
    worker = processor(consumer, GatedSink())
    worker.tuning.flush_interval_ms = flush_interval_ms
    running = asyncio.create_task(worker.run())
    ticks = 0
    try:
        for _ in range(20):  # other work (the HTTP server, here a sleeper) keeps its turns
            await asyncio.wait_for(asyncio.sleep(0.001), timeout=1.0)
            ticks += 1
    finally:
        worker.stop()
        await asyncio.wait_for(running, timeout=5)
    assert ticks == 20
    assert consumer.timeouts
    assert min(consumer.timeouts) >= 1
