"""Publishes access events to Kafka and reports success only once the broker acknowledged them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.gateway.event_processor.observe import received_at_header
from shared.events import AccessEvent
from shared.kafka import create_producer, ensure_topics

log = logging.getLogger(__name__)


class BrokerUnavailable(ConnectionError):
    """Kafka did not acknowledge in time; the caller answers 503 with Retry-After.

    A ConnectionError, so the `kafka` circuit breaker counts it as a failure."""


class EventPublisher:
    """Owns the producer; (re)starts it lazily so the gateway starts even while Kafka is down."""

    def __init__(
        self, bootstrap_servers: str, topic: str, partitions: int, *, timeout_s: float = 10.0
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = create_producer(
                    self.bootstrap_servers, request_timeout_ms=int(self.timeout_s * 1000)
                )
                try:
                    await asyncio.wait_for(producer.start(), timeout=self.timeout_s)
                    await ensure_topics(
                        self.bootstrap_servers,
                        {self.topic: self.partitions},
                        timeout_ms=int(self.timeout_s * 1000),
                    )
                except (KafkaError, TimeoutError, OSError) as exc:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise BrokerUnavailable(f"Kafka at {self.bootstrap_servers} unavailable: {exc}") from exc
                self._producer = producer
        return self._producer

    async def publish(self, events: Sequence[AccessEvent]) -> int:
        """Send every event (key = door_id, so a door's events stay ordered) and wait for acks=all."""
        producer = await self._ensure_producer()
        stamp = received_at_header()  # processing latency counts from here
        try:
            futures = [
                await producer.send(self.topic, event.to_wire(), key=event.door_id.encode(), headers=[stamp])
                for event in events
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self.timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge: {exc or type(exc).__name__}") from exc
        return len(futures)

    async def check_ready(self) -> None:
        producer = await self._ensure_producer()
        await asyncio.wait_for(producer.partitions_for(self.topic), timeout=2)

    async def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
