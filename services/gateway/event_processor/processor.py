"""The event processor: Kafka → PostgreSQL, batched, idempotent, committed only after storing.

Delivery is at-least-once (offsets are committed after the batch is durably stored or dead-
lettered) and the sink is idempotent (`ON CONFLICT (event_id) DO NOTHING`), so every event is
stored exactly once however often it is redelivered. Messages that can never be stored go to
the dead-letter topic with their original bytes, the reason and their source; the processor
keeps going. While the database is down (its breaker open, or connections failing) the
processor pauses its partitions, keeps the batch in hand, retries with backoff and commits
nothing; it resumes by itself.

The batch is pipelined: while stores run (PostgreSQL's work, in its own processes), the next
batch is fetched, decoded and validated here, and up to `stores_in_flight` batches (default 2)
are stored at once, each on its own pooled connection, so the database is not idle during one
store's round trips, its commit, or the event loop's decoding. Offsets are still committed strictly
in order: a batch is settled (dead letters sent and acknowledged, offsets committed) only after
every batch fetched before it is stored and settled. A batch whose store fails while the database
is down is retried, partitions paused, and nothing fetched after it commits meanwhile. A message is
decoded by msgspec and validated by the fast path (`shared.event_fastpath`), which hands anything
it is not sure of to orjson and `AccessEvent`, so a refusal carries the model's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TypeAlias, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from services.gateway.event_processor import metrics
from services.gateway.event_processor.observe import (
    ConsumerLag,
    batch_links,
    observe_latencies,
    received_at,
    received_times,
)
from services.gateway.event_processor.sink import EventSink, StoreOutcome, holds_batch
from shared.breaker import MESSAGE_CAUSED, CircuitBreakerOpen
from shared.event_fastpath import EventRow, decode_many, fast_rows, parse_message_general
from shared.event_vocabulary import time_window
from shared.performance import get_performance_monitor
from shared.performance.operation import OpenOperation, open_operation, operation

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord  # of bytes key and value; aiokafka ships no type hints


@dataclass
class ProcessorTuning:
    """Knobs the optimizer may change live."""

    batch_size: int
    flush_interval_ms: int


@dataclass
class ProcessorStats:
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    store_retries: int = 0
    commit_failures: int = 0
    paused: bool = False
    last_batch_at: float | None = None
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)
    # Seconds spent in each stage since start (the benchmark's breakdown). `store` adds up the
    # stores' own durations (several run at once, so it can exceed the wall time); `store_wait`
    # is the time this loop waited for one to end, the rest of it overlapped decode and validate.
    decode_s: float = 0.0
    validate_s: float = 0.0
    store_wait_s: float = 0.0
    store_s: float = 0.0
    dead_letter_s: float = 0.0
    commit_s: float = 0.0


# A batch gathered while the database is idle is stored once it has waited this long (or is full,
# or `flush_interval_ms` is up): long enough that a trickle of events does not become one
# transaction per fetch, short against the latency budget.
_EARLY_FLUSH_S = 0.005
# While a batch is being stored, how often gathering looks whether it is done.
_STORE_POLL_S = 0.005

# Records decoded or validated between two hand-backs of the event loop (about 2-5 ms of CPU).
_YIELD_EVERY = 500


@dataclass
class Batch:
    """Fetched records, decoded and validated: the rows to store and what to dead-letter."""

    records: list[Record]
    rows: list[EventRow]
    sources: list[Record]  # the record of each row
    dead: list[tuple[Record, str, str]]


@dataclass
class InFlight:
    """A batch being stored in the background, and the open operation it is finished under."""

    batch: Batch
    storing: asyncio.Task[StoreOutcome]
    span: OpenOperation


class EventProcessor:
    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        dlq_producer: AIOKafkaProducer,
        sink: EventSink,
        dlq_topic: str,
        tuning: ProcessorTuning,
        max_message_bytes: int,
        retry_backoff_max_s: float = 10.0,
        stores_in_flight: int = 2,
    ) -> None:
        self.consumer = consumer
        self.dlq_producer = dlq_producer
        self.sink = sink
        self.dlq_topic = dlq_topic
        self.tuning = tuning
        self.max_message_bytes = max_message_bytes
        self.retry_backoff_max_s = retry_backoff_max_s
        self.stores_in_flight = max(1, stores_in_flight)
        self.stats = ProcessorStats()
        self.lag = ConsumerLag()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish: the batch in hand is stored and committed first."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        # Batches being stored or stored but not yet settled, oldest first: settled from the head
        # only, so offsets are committed in the order the batches were fetched.
        pending: deque[InFlight] = deque()
        try:
            while not self.stopping:
                full = len(pending) >= self.stores_in_flight
                records = await self._next_batch(pending[0].storing if pending else None, full=full)
                batch = await self.prepare(records) if records else None
                if batch is not None:
                    if len(pending) >= self.stores_in_flight:
                        # No free connection: the oldest store must end first. The next store
                        # starts before that batch's dead letters and commit, so the database
                        # never waits for the broker's round trips.
                        outcome = await self._stored(pending[0])
                        if outcome is None:
                            return
                        head = pending.popleft()
                        pending.append(self._begin(batch))
                        await self._settle(head, outcome)
                    else:
                        pending.append(self._begin(batch))
                if not await self._settle_done(pending):
                    return
            while pending:
                outcome = await self._stored(pending[0])
                if outcome is None:
                    return
                await self._settle(pending.popleft(), outcome)
        finally:
            # Leaving on an error or a stop during an outage: these batches are not committed,
            # their next owner re-reads them and the idempotent sink drops what was stored.
            for inflight in pending:
                if not inflight.storing.done():
                    inflight.storing.cancel()
            for inflight in pending:
                with contextlib.suppress(BaseException):
                    await inflight.storing
                inflight.span.end()

    async def _settle_done(self, pending: deque[InFlight]) -> bool:
        """Settle, in order, the batches at the head whose store has ended; False when asked to
        stop while one of them is held for an unavailable database."""
        while pending and pending[0].storing.done():
            outcome = await self._stored(pending[0])
            if outcome is None:
                return False
            await self._settle(pending.popleft(), outcome)
        return True

    async def _next_batch(
        self, storing: asyncio.Task[StoreOutcome] | None = None, *, full: bool = True
    ) -> list[Record]:
        """Up to `batch_size` records, waiting at most `flush_interval_ms` after the first one
        arrived. `storing` is the oldest store still unsettled, `full` whether every store slot is
        taken. With a slot free the batch goes once it has waited `_EARLY_FLUSH_S`: a batch
        waiting while the database has a free connection only adds latency. With every slot
        taken it keeps growing until the oldest store ends (then `_EARLY_FLUSH_S` applies), since
        a batch gathered during a store costs no time at all. With nothing fetched yet, it
        returns empty as soon as the oldest store ends, so that batch is settled without delay."""
        size = max(1, self.tuning.batch_size)
        interval = self.tuning.flush_interval_ms / 1000
        records: list[Record] = []
        first: float | None = None
        began = time.monotonic()
        while len(records) < size and not self.stopping:
            now = time.monotonic()
            busy = storing is not None and not storing.done()
            if first is None:
                wait = began + interval - now
                if storing is not None and not busy:
                    return records
                if busy:
                    wait = min(wait, _STORE_POLL_S)
                if wait <= 0:
                    return records
            else:
                wait = first + interval - now
                if wait <= 0:
                    break
                if not full or not busy:
                    if now - first >= _EARLY_FLUSH_S:
                        break
                    wait = min(wait, first + _EARLY_FLUSH_S - now)
                else:
                    # Look at the store again soon: fetching returns at once only while records wait.
                    wait = min(wait, _STORE_POLL_S)
            # Rounded up: aiokafka's getmany with timeout_ms=0 and nothing fetched returns without
            # suspending, so a wait under 1 ms rounded down to 0 would spin here without ever
            # letting the event loop serve anything else (a 1 ms flush interval did exactly that).
            fetched = await self.consumer.getmany(
                timeout_ms=max(1, math.ceil(wait * 1000)), max_records=size - len(records)
            )
            for partition_records in fetched.values():
                records.extend(partition_records)
            if records and first is None:
                first = time.monotonic()
        return records

    async def prepare(self, records: list[Record]) -> Batch:
        """Decode and validate `records`: CPU only, handing the event loop back every
        `_YIELD_EVERY` records so the COPY of the previous batch keeps streaming meanwhile
        (asyncpg encodes and sends a COPY in chunks, each waiting for the socket to drain).

        Each message is first decoded by msgspec straight into the fields of the well-behaved
        shape and checked by the fast path; a message msgspec refuses, or the fast path is not
        sure of, goes the general way (orjson, then the fast path on the dict, then the model),
        whose verdict and reason are the model's."""
        batch = Batch(records, [], [], [])
        spent = self.stats.decode_s + self.stats.validate_s
        limit = self.max_message_bytes
        window = time_window()
        for start in range(0, len(records), _YIELD_EVERY):
            chunk = records[start : start + _YIELD_EVERY]
            started = time.perf_counter()
            messages = decode_many([record.value or b"" for record in chunk], limit)
            decoded = time.perf_counter()
            self.stats.decode_s += decoded - started
            try:
                rows: list[EventRow | None] = fast_rows(messages, window)
            except Exception:  # a bug of the fast path must not decide: the general way does
                rows = [None] * len(chunk)
            if None not in rows:  # every message took the fast path: no Python loop over them
                batch.rows.extend(cast(list[EventRow], rows))
                batch.sources.extend(chunk)
            else:
                for record, row in zip(chunk, rows, strict=True):
                    if row is None:
                        verdict = parse_message_general(record.value or b"", limit)
                        if len(verdict) == 2:  # (reason, message): a dead letter
                            batch.dead.append((record, verdict[0], verdict[1]))
                            continue
                        row = verdict
                    batch.rows.append(row)
                    batch.sources.append(record)
            self.stats.validate_s += time.perf_counter() - decoded
            await asyncio.sleep(0)
        get_performance_monitor().record(
            "processor.parse", self.stats.decode_s + self.stats.validate_s - spent
        )
        return batch

    async def handle(self, records: list[Record]) -> int:
        """Store, dead-letter, then commit `records` (no pipelining); returns events newly stored."""
        batch = await self.prepare(records)
        before = self.stats.stored
        inflight = self._begin(batch)
        try:
            outcome = await self._stored(inflight)
        except BaseException:
            inflight.span.end()
            raise
        if outcome is None:
            inflight.span.end()
        else:
            await self._settle(inflight, outcome)
        return self.stats.stored - before

    def _begin(self, batch: Batch) -> InFlight:
        """Open the batch's operation (one span linked to the trace of every message, timed as
        `processor.batch`) and start storing under it, so the store's database spans are its
        children even though the batch is finished later, after the next one is decoded."""
        span = open_operation("processor.batch", links=batch_links(batch.records), records=len(batch.records))
        with span.inside():
            storing = asyncio.create_task(self._store_timed(batch.rows))
        return InFlight(batch, storing, span)

    async def _store_timed(self, rows: list[EventRow]) -> StoreOutcome:
        with operation("processor.store", events=len(rows)):
            return await self._store_once(rows)

    async def _store_once(self, rows: list[EventRow]) -> StoreOutcome:
        started = time.perf_counter()
        outcome = await self.sink.store(rows)
        elapsed = time.perf_counter() - started
        self.stats.store_s += elapsed
        metrics.STORE_SECONDS.observe(elapsed)
        return outcome

    async def _stored(self, inflight: InFlight) -> StoreOutcome | None:
        """Wait, under the batch's span, until the batch is stored, retrying while the database
        is down; None when asked to stop meanwhile (nothing committed: the batch is redelivered).
        The span stays open: `_settle` ends it."""
        started = time.perf_counter()
        try:
            with inflight.span.inside():
                try:
                    outcome: StoreOutcome | None = await inflight.storing
                except Exception as exc:
                    if not holds_batch(exc):
                        raise  # the sink hands back rows it cannot store; this is a bug
                    outcome = await self._store_until_done(inflight.batch.rows, exc)
        finally:
            self.stats.store_wait_s += time.perf_counter() - started
        if outcome is not None:
            self.stats.last_error = None
            self._resume()
        return outcome

    async def _settle(self, inflight: InFlight, outcome: StoreOutcome) -> None:
        """After the batch is stored: dead-letter what must be, count, commit; under its span,
        which ends with it."""
        try:
            with inflight.span.inside():
                await self._complete(inflight.batch, outcome)
        finally:
            inflight.span.end()

    async def _complete(self, batch: Batch, outcome: StoreOutcome) -> None:
        dead = batch.dead
        if outcome.refused:
            dead = [*dead, *((batch.sources[i], "rejected_by_database", why) for i, why in outcome.refused)]
        if dead:
            started = time.perf_counter()
            with operation("processor.dead_letter", messages=len(dead)):
                await self._dead_letter(dead)
            self.stats.dead_letter_s += time.perf_counter() - started
        refused = {i for i, _ in outcome.refused}
        received = received_times(batch.sources)
        if refused:
            kept = [i for i in range(len(batch.rows)) if i not in refused]
            observe_latencies([batch.rows[i][1] for i in kept], [received[i] for i in kept])
        else:
            observe_latencies([row[1] for row in batch.rows], received)
        stored = len(batch.rows) - len(refused)
        inserted = outcome.inserted
        metrics.EVENTS_PROCESSED.inc(inserted)
        metrics.EVENTS_DUPLICATE.inc(stored - inserted)
        metrics.BATCH_SIZE.observe(len(batch.records))
        self.stats.batches += 1
        self.stats.stored += inserted
        self.stats.duplicates += stored - inserted
        self.stats.last_batch_at = time.time()
        started = time.perf_counter()
        with operation("processor.commit"):
            await self._commit(batch.records)
        self.stats.commit_s += time.perf_counter() - started
        # The lag reads each partition's newest receive time, dead letters included.
        if batch.dead:
            received += [received_at(record) for record, _, _ in batch.dead]
            self.lag.note_batch([*batch.sources, *(record for record, _, _ in batch.dead)], received)
        else:
            self.lag.note_batch(batch.sources, received)

    async def _store_until_done(self, rows: list[EventRow], failure: Exception) -> StoreOutcome | None:
        """Retry with backoff, partitions paused, while the database is down; None if stopping."""
        delay = 0.1
        while True:
            self.stats.store_retries += 1
            self.stats.last_error = f"{type(failure).__name__}: {failure}"
            metrics.STORE_RETRIES.inc()
            retry_after = failure.retry_after if isinstance(failure, CircuitBreakerOpen) else 0.0
            wait = min(max(delay, retry_after), self.retry_backoff_max_s)
            log.warning(
                "database unavailable (%s); %d events held, retrying in %.1fs", failure, len(rows), wait
            )
            self._pause()
            if not await self._idle(wait):
                return None
            delay = min(delay * 2, self.retry_backoff_max_s)
            try:
                return await self._store_timed(rows)
            except Exception as exc:
                if not holds_batch(exc):
                    raise
                failure = exc

    async def _idle(self, seconds: float) -> bool:
        """Wait `seconds` while polling the paused consumer (so the group keeps us); False if stopping."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            # Paused partitions return nothing; polling keeps max_poll_interval from expiring.
            await self.consumer.getmany(timeout_ms=max(1, math.ceil(min(left, 0.5) * 1000)), max_records=1)
        return False

    def _pause(self) -> None:
        if not self.stats.paused:
            self.consumer.pause(*self.consumer.assignment())
            self.stats.paused = True
            metrics.PAUSED.set(1)

    def _resume(self) -> None:
        if self.stats.paused:
            self.consumer.resume(*self.consumer.paused())
            self.stats.paused = False
            metrics.PAUSED.set(0)

    async def _commit(self, records: list[Record]) -> None:
        # Each partition's last record in the batch: its newest, as fetches of a partition follow
        # each other. Were the position reset in between (a rebalance), the last is older than
        # the newest: committing it is still safe (everything before it is in the batch or
        # committed) and only redelivers what the idempotent sink drops. A dict built in one
        # pass, since this ran for every record.
        last = {(record.topic, record.partition): record.offset for record in records}
        offsets = {TopicPartition(topic, part): offset + 1 for (topic, part), offset in last.items()}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took some partitions away: their new owner re-reads the batch and
            # the idempotent sink drops what is already stored.
            self.stats.commit_failures += 1
            metrics.COMMIT_FAILURES.inc()
            log.warning("offset commit refused (%s); the batch will be redelivered", exc)

    async def _dead_letter(self, dead: list[tuple[Record, str, str]]) -> None:
        # Like Kafka Connect's DLQ: the value is the original bytes untouched, the context
        # travels in headers, after the message's own (`traceparent` included, so the trace
        # that produced it leads to its dead letter). Every send is acknowledged before the
        # offsets are committed.
        letters = [(record, _dlq_headers(record, reason, message)) for record, reason, message in dead]
        outcomes = await asyncio.gather(
            *(self._send(record, headers) for record, headers in letters), return_exceptions=True
        )
        # A message too large to be dead-lettered with its headers (it was just under the
        # broker's limit) must not hold the partition: its first bytes go instead, marked.
        retry = [
            (record, [*headers, ("dlq.truncated", str(len(record.value or b"")).encode())])
            for (record, headers), outcome in zip(letters, outcomes, strict=True)
            if isinstance(outcome, MESSAGE_CAUSED)
        ]
        failed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, MESSAGE_CAUSED)]
        if retry and not failed:
            outcomes = await asyncio.gather(
                *(self._send(record, headers, truncate=True) for record, headers in retry),
                return_exceptions=True,
            )
            failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            log.error("dead-letter topic unavailable (%r); the batch will be redelivered", failed[0])
            raise failed[0]
        for _, reason, _ in dead:
            metrics.EVENTS_FAILED.labels(reason=reason).inc()
        metrics.DEAD_LETTERED.inc(len(dead))
        self.stats.dead_lettered += len(dead)

    async def _send(
        self, record: Record, headers: list[tuple[str, bytes]], *, truncate: bool = False
    ) -> object:
        value = record.value or b""
        if truncate:
            value = value[: self.max_message_bytes]
        future = await self.dlq_producer.send(self.dlq_topic, value, key=record.key, headers=headers)
        return await future


def _dlq_headers(record: Record, reason: str, message: str) -> list[tuple[str, bytes]]:
    return [
        *(record.headers or ()),
        ("dlq.reason", reason.encode()),
        ("dlq.error", message.encode("utf-8", "replace")[:1000]),
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
    ]
