"""The event processor: Kafka → PostgreSQL, batched, idempotent, committed only after storing.

Delivery is at-least-once (offsets are committed after the batch is durably stored or dead-
lettered) and the sink is idempotent (`ON CONFLICT (event_id) DO NOTHING`), so every event is
stored exactly once however often it is redelivered. Messages that can never be stored go to
the dead-letter topic with their original bytes, the reason and their source; the processor
keeps going. While the database is down (its breaker open, or connections failing) the
processor pauses its partitions, keeps the batch in hand, retries with backoff and commits
nothing; it resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from services.gateway.event_processor import metrics
from services.gateway.event_processor.observe import (
    ConsumerLag,
    batch_links,
    observe_latencies,
    received_at,
)
from services.gateway.event_processor.sink import EventSink, StoreOutcome, is_database_down
from shared.breaker import MESSAGE_CAUSED, CircuitBreakerOpen
from shared.events import AccessEvent, EventParseError, parse_event_bytes
from shared.performance import get_performance_monitor
from shared.performance.operation import operation

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


def parse_record(value: bytes, max_bytes: int) -> AccessEvent | tuple[str, str]:
    """The event in one message, or (reason, message) for the dead-letter topic.

    Nothing a message holds may escape from here: an exception would make the supervisor
    re-read the same batch for ever."""
    try:
        return parse_event_bytes(value, max_bytes=max_bytes)
    except EventParseError as exc:
        return exc.reason, exc.message
    except Exception as exc:
        log.exception("unexpected error parsing a message; dead-lettering it")
        return "invalid_event", f"{type(exc).__name__}: {exc}"


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
    ) -> None:
        self.consumer = consumer
        self.dlq_producer = dlq_producer
        self.sink = sink
        self.dlq_topic = dlq_topic
        self.tuning = tuning
        self.max_message_bytes = max_message_bytes
        self.retry_backoff_max_s = retry_backoff_max_s
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
        while not self.stopping:
            records = await self._next_batch()
            if records:
                await self.handle(records)

    async def _next_batch(self) -> list[Record]:
        """Up to `batch_size` records, waiting at most `flush_interval_ms` after the first one arrived."""
        size = max(1, self.tuning.batch_size)
        interval = self.tuning.flush_interval_ms / 1000
        records: list[Record] = []
        deadline: float | None = None
        while len(records) < size and not self.stopping:
            wait = interval if deadline is None else deadline - time.monotonic()
            if deadline is not None and wait <= 0:
                break
            fetched = await self.consumer.getmany(
                timeout_ms=max(0, int(wait * 1000)), max_records=size - len(records)
            )
            for partition_records in fetched.values():
                records.extend(partition_records)
            if not records:
                return records
            if deadline is None:
                deadline = time.monotonic() + interval
        return records

    async def handle(self, records: list[Record]) -> int:
        """`_handle` under one span linked to the trace of every message, timed as `processor.batch`."""
        with operation("processor.batch", links=batch_links(records), records=len(records)):
            return await self._handle(records)

    async def _handle(self, records: list[Record]) -> int:
        """Store, dead-letter, then commit `records`; returns events newly stored.

        Returns without committing when asked to stop while the database is down: the batch
        is redelivered to whoever consumes the partitions next.
        """
        events: list[AccessEvent] = []
        sources: list[Record] = []
        dead: list[tuple[Record, str, str]] = []
        parse_started = time.perf_counter()
        for record in records:
            parsed = parse_record(record.value or b"", self.max_message_bytes)
            if isinstance(parsed, AccessEvent):
                events.append(parsed)
                sources.append(record)
            else:
                dead.append((record, *parsed))
        get_performance_monitor().record("processor.parse", time.perf_counter() - parse_started)
        with operation("processor.store", events=len(events)):
            outcome = await self._store_until_done(events)
        if outcome is None:
            return 0
        if outcome.refused:
            source_of = {id(event): record for event, record in zip(events, sources, strict=True)}
            for event, reason in outcome.refused:
                dead.append((source_of[id(event)], "rejected_by_database", reason))
        if dead:
            with operation("processor.dead_letter", messages=len(dead)):
                await self._dead_letter(dead)
        received = {id(e): received_at(r) for e, r in zip(events, sources, strict=True)}
        observe_latencies(outcome.stored, received)
        inserted = outcome.inserted
        metrics.EVENTS_PROCESSED.inc(inserted)
        metrics.EVENTS_DUPLICATE.inc(len(outcome.stored) - inserted)
        metrics.BATCH_SIZE.observe(len(records))
        self.stats.batches += 1
        self.stats.stored += inserted
        self.stats.duplicates += len(outcome.stored) - inserted
        self.stats.last_batch_at = time.time()
        with operation("processor.commit"):
            await self._commit(records)
        self.lag.note_batch(records)
        return inserted

    async def _store_until_done(self, events: list[AccessEvent]) -> StoreOutcome | None:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                outcome = await self.sink.store(events)
            except Exception as exc:
                if not is_database_down(exc):
                    raise  # the sink hands back events it cannot store; this is a bug
                self.stats.store_retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                metrics.STORE_RETRIES.inc()
                wait = max(delay, exc.retry_after) if isinstance(exc, CircuitBreakerOpen) else delay
                wait = min(wait, self.retry_backoff_max_s)
                log.warning(
                    "database unavailable (%s); %d events held, retrying in %.1fs", exc, len(events), wait
                )
                self._pause()
                if not await self._idle(wait):
                    return None
                delay = min(delay * 2, self.retry_backoff_max_s)
                continue
            metrics.STORE_SECONDS.observe(time.perf_counter() - started)
            self.stats.last_error = None
            self._resume()
            return outcome

    async def _idle(self, seconds: float) -> bool:
        """Wait `seconds` while polling the paused consumer (so the group keeps us); False if stopping."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            # Paused partitions return nothing; polling keeps max_poll_interval from expiring.
            await self.consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000), max_records=1)
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
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if record.offset + 1 > offsets.get(tp, -1):
                offsets[tp] = record.offset + 1
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
