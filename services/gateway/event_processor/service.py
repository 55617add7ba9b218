"""Runs the EventProcessor under supervision: (re)connects to Kafka with backoff, stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field

from services.gateway.event_processor.processor import EventProcessor, ProcessorTuning
from services.gateway.event_processor.settings import EventProcessorSettings
from services.gateway.event_processor.sink import EventSink
from shared.breaker import CircuitBreaker
from shared.db import create_pool, ping
from shared.event_vocabulary import get_event_limits
from shared.kafka import create_consumer, create_producer, ensure_topics

log = logging.getLogger(__name__)


class ProcessorStatus(BaseModel):
    """`GET /status` of the event processor: its consumer, live tuning and counts since start."""

    consuming: bool = Field(description="joined the group and fetching")
    group_id: str
    topic: str
    batch_size: int
    flush_interval_ms: int
    stores_in_flight: int = Field(description="batches stored at once, on as many connections")
    stored: int = Field(description="events newly stored")
    duplicates: int = Field(description="events already stored (redeliveries, client retries)")
    dead_lettered: int
    batches: int
    paused: bool = Field(description="consumption paused while the database is unavailable")
    store_retries: int
    commit_failures: int
    stage_seconds: dict[str, float] | None = Field(
        description="seconds per stage (decode, validate, store, store_wait, dead_letter, commit) of the "
        "current consumer; none before it starts"
    )
    database_breaker: str = Field(description="closed, half_open or open")
    last_error: str | None


class ProcessorService:
    def __init__(
        self, settings: EventProcessorSettings, pool: asyncpg.Pool, database_breaker: CircuitBreaker
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.sink = EventSink(pool, database_breaker)
        self.tuning = ProcessorTuning(
            batch_size=settings.processor_batch_size,
            flush_interval_ms=settings.processor_flush_interval_ms,
        )
        self.processor: EventProcessor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.consuming = False
        self.last_error: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="event-processor")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Graceful: the batch in hand is stored and committed, then the consumer leaves the group."""
        timeout_s = timeout_s if timeout_s is not None else self.settings.processor_shutdown_timeout_s
        self._stopping = True
        if self.processor is not None:
            self.processor.stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _supervise(self) -> None:
        bootstrap = self.settings.require_kafka()
        delay = 0.5
        while not self._stopping:
            consumer = create_consumer(
                bootstrap,
                self.settings.access_events_topic,
                group_id=self.settings.processor_group_id,
                session_timeout_ms=self.settings.kafka_session_timeout_ms,
                heartbeat_interval_ms=self.settings.kafka_heartbeat_interval_ms,
                max_poll_records=max(self.tuning.batch_size, 1),
                fetch_max_wait_ms=self.settings.processor_fetch_max_wait_ms,
            )
            producer = create_producer(bootstrap, request_timeout_ms=self.settings.kafka_request_timeout_ms)
            try:
                await ensure_topics(
                    bootstrap,
                    {
                        self.settings.access_events_topic: self.settings.access_events_partitions,
                        self.settings.access_events_dlq_topic: 1,
                    },
                )
                await producer.start()
                await consumer.start()
                self.processor = EventProcessor(
                    consumer=consumer,
                    dlq_producer=producer,
                    sink=self.sink,
                    dlq_topic=self.settings.access_events_dlq_topic,
                    tuning=self.tuning,
                    max_message_bytes=get_event_limits().max_event_bytes,
                    retry_backoff_max_s=self.settings.processor_retry_backoff_max_s,
                    stores_in_flight=self.settings.processor_stores_in_flight,
                )
                if self._stopping:
                    break
                self.consuming = True
                self.last_error = None
                delay = 0.5
                log.info(
                    "event processor consuming %s as %s",
                    self.settings.access_events_topic,
                    self.settings.processor_group_id,
                )
                lag_task = asyncio.create_task(self._watch_lag(self.processor), name="consumer-lag")
                try:
                    await self.processor.run()
                finally:
                    lag_task.cancel()
            except KafkaError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("event processor lost Kafka (%s); reconnecting in %.1fs", exc, delay)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("event processor failed; restarting in %.1fs", delay)
            finally:
                self.consuming = False
                with contextlib.suppress(Exception):
                    await consumer.stop()
                with contextlib.suppress(Exception):
                    await producer.stop()
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _watch_lag(self, processor: EventProcessor) -> None:
        """Consumer lag every LAG_REFRESH_S, also while paused (no batches are handled then)."""
        while True:
            await asyncio.sleep(self.settings.processor_lag_refresh_s)
            try:
                await processor.lag.refresh(processor.consumer)
            except Exception as exc:  # lag is a reading, never a reason to stop consuming
                log.debug("consumer lag refresh failed: %s", exc)

    async def check_ready(self) -> None:
        if not self.consuming:
            raise RuntimeError(self.last_error or "not consuming yet")

    def status(self) -> ProcessorStatus:
        stats = self.processor.stats if self.processor else None
        return ProcessorStatus(
            consuming=self.consuming,
            group_id=self.settings.processor_group_id,
            topic=self.settings.access_events_topic,
            batch_size=self.tuning.batch_size,
            flush_interval_ms=self.tuning.flush_interval_ms,
            stores_in_flight=self.settings.processor_stores_in_flight,
            stored=stats.stored if stats else 0,
            duplicates=stats.duplicates if stats else 0,
            dead_lettered=stats.dead_lettered if stats else 0,
            batches=stats.batches if stats else 0,
            paused=stats.paused if stats else False,
            store_retries=stats.store_retries if stats else 0,
            commit_failures=stats.commit_failures if stats else 0,
            # Seconds spent per stage by the current consumer (since its last (re)start).
            stage_seconds={
                "decode": round(stats.decode_s, 3),
                "validate": round(stats.validate_s, 3),
                "store": round(stats.store_s, 3),
                "store_wait": round(stats.store_wait_s, 3),
                "dead_letter": round(stats.dead_letter_s, 3),
                "commit": round(stats.commit_s, 3),
            }
            if stats
            else None,
            database_breaker=self.sink.breaker.state,
            last_error=self.last_error or (stats.last_error if stats else None),
        )


@contextlib.asynccontextmanager
async def running_processor(
    settings: EventProcessorSettings,
    database_breaker: CircuitBreaker,
    checks: dict[str, Callable[[], Awaitable[object]]],
    *,
    consumer_check: str,
) -> AsyncIterator[ProcessorService]:
    """A started processor with its own pool, registered in `checks`; drained and closed on exit.

    The pool starts empty (min_size=0) so the processor, and the gateway hosting it, start while
    the database is down; the breaker and the processor's backoff take it from there. It holds a
    connection for each store in flight, and two more for the health check and a store being
    retried one event at a time while the others run.
    """
    pool = await create_pool(
        settings.require_database_url(),
        min_size=0,
        max_size=settings.processor_stores_in_flight + 2,
        command_timeout=settings.database_timeout_s,
    )
    processor = ProcessorService(settings, pool, database_breaker)
    checks["database"] = lambda: ping(pool)
    checks[consumer_check] = processor.check_ready
    processor.start()
    try:
        yield processor
    finally:
        await processor.stop()
        await pool.close()
