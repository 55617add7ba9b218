"""The event processor: Kafka → PostgreSQL, batched, idempotent, committed only after storing.

Delivery is at-least-once (offsets are committed after the batch is durably stored) and the
sink is idempotent (`ON CONFLICT (event_id) DO NOTHING`), so every event is stored exactly once
however often it is redelivered. Messages that can never be stored go to the dead-letter
topic with their original bytes and the reason; the processor keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from services.gateway.event_processor import metrics
from shared.event_store import store_events
from shared.events import AccessEvent, EventParseError, parse_event_bytes

log = logging.getLogger(__name__)


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
    last_batch_at: float | None = None
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class EventProcessor:
    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        dlq_producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        dlq_topic: str,
        tuning: ProcessorTuning,
        max_message_bytes: int = 64 * 1024,
        retry_backoff_max_s: float = 10.0,
    ) -> None:
        self.consumer = consumer
        self.dlq_producer = dlq_producer
        self.pool = pool
        self.dlq_topic = dlq_topic
        self.tuning = tuning
        self.max_message_bytes = max_message_bytes
        self.retry_backoff_max_s = retry_backoff_max_s
        self.stats = ProcessorStats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish: the batch in hand is stored and committed first."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self.tuning.flush_interval_ms, max_records=self.tuning.batch_size
            )
            records = [record for partition_records in batch.values() for record in partition_records]
            if not records:
                continue
            await self.process(records)
            await self.consumer.commit()

    async def process(self, records: list[ConsumerRecord[bytes, bytes]]) -> int:
        """Store the valid events of `records`, dead-letter the rest; returns events newly stored."""
        events: list[AccessEvent] = []
        for record in records:
            try:
                events.append(parse_event_bytes(record.value or b"", max_bytes=self.max_message_bytes))
            except EventParseError as exc:
                await self._dead_letter(record, exc.reason, exc.message)
        inserted = await self._store_with_retry(events)
        now = datetime.now(UTC)
        for event in events:
            metrics.EVENT_LATENCY.observe(max(0.0, (now - event.timestamp).total_seconds()))
        metrics.EVENTS_PROCESSED.inc(inserted)
        metrics.EVENTS_DUPLICATE.inc(len(events) - inserted)
        self.stats.batches += 1
        self.stats.stored += inserted
        self.stats.duplicates += len(events) - inserted
        self.stats.last_batch_at = time.time()
        metrics.BATCH_SIZE.observe(len(records))
        return inserted

    async def _store_with_retry(self, events: list[AccessEvent]) -> int:
        delay = 0.2
        while True:
            try:
                started = time.perf_counter()
                inserted = await store_events(self.pool, events)
                metrics.STORE_SECONDS.observe(time.perf_counter() - started)
                self.stats.last_error = None
                return inserted
            except (OSError, asyncpg.PostgresConnectionStatusError, asyncpg.InterfaceError,
                    asyncpg.CannotConnectNowError, TimeoutError) as exc:
                # The database is unreachable: nothing is committed, the batch is retried.
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                metrics.EVENTS_FAILED.labels(reason="database_unavailable").inc(len(events))
                log.warning("storing %d events failed, retrying in %.1fs: %s", len(events), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_backoff_max_s)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str, message: str) -> None:
        metrics.EVENTS_FAILED.labels(reason=reason).inc()
        self.stats.dead_lettered += 1
        # Like Kafka Connect's DLQ: the value is the original bytes untouched, the context
        # travels in headers.
        headers = [
            ("dlq.reason", reason.encode()),
            ("dlq.error", message.encode()[:1000]),
            ("dlq.source.topic", record.topic.encode()),
            ("dlq.source.partition", str(record.partition).encode()),
            ("dlq.source.offset", str(record.offset).encode()),
        ]
        await self.dlq_producer.send_and_wait(self.dlq_topic, record.value or b"", key=record.key, headers=headers)
