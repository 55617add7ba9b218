"""Publishes access events to Kafka and says exactly which ones the broker acknowledged.

Kafka without transactions (the embedded broker has none) cannot publish a batch all or
nothing, so the answer is made true instead: when not every event is acknowledged, the error
carries the indices that were and the ones whose fate is unknown. Storage is idempotent by
`event_id`, so a client may always resend the whole request.

Two kinds of failure, kept apart because the `kafka` breaker must count only the broker's:
:class:`BrokerUnavailable` (no connection, no acknowledgement in time: a ConnectionError, which
the breaker counts) and :class:`MessageRefused` (the broker or the client library refused a
message for what it is, such as its size: the broker is fine, nothing is counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace

from services.gateway.coalescer import BatchCoalescer
from services.gateway.event_processor.observe import received_at_header
from shared.breaker import MESSAGE_CAUSED, CausedByInput
from shared.kafka import create_producer, ensure_topics
from shared.tracing import tracing_active

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("sentinel_fleet")


@contextlib.contextmanager
def _producer_span(topic: str, count: int) -> Iterator[list[tuple[str, bytes]]]:
    """The headers every message of one request carries; while tracing, under one producer span
    whose context they carry (the consumer side continues it, the processor's batch links it)."""
    headers: list[tuple[str, bytes]] = []
    if not tracing_active():
        yield headers
        return
    with _tracer.start_as_current_span(
        f"{topic} send",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation": "publish",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": count,
        },
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        headers.extend((name, value.encode()) for name, value in carrier.items())
        yield headers


class Message(NamedTuple):
    """One Kafka message. A named tuple: built once per event on the hot path, where a frozen
    dataclass's `__init__` (an `object.__setattr__` per field) costs several times as much."""

    key: bytes
    value: bytes


@dataclass
class PublishOutcome:
    """Indices (in request order) by what the broker said about them."""

    acknowledged: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # certainly not published
    unknown: list[int] = field(default_factory=list)  # sent, no answer in time: maybe published


class PublishIncomplete(Exception):
    """Not every event was acknowledged; `outcome` says which were."""

    def __init__(self, message: str, outcome: PublishOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class BrokerUnavailable(PublishIncomplete, ConnectionError):
    """Kafka could not be reached or did not acknowledge in time; counted by the `kafka` breaker."""


class MessageRefused(PublishIncomplete, CausedByInput):
    """A message was refused for what it is (e.g. too large); never counted by the breaker."""


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
        self._coalescer: BatchCoalescer | None = None
        self._lock = asyncio.Lock()

    async def _ensure_producer(self, count: int) -> AIOKafkaProducer:
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
                    # The details (servers, error) go to the log, never to the client.
                    log.warning("Kafka at %s unavailable: %r", self.bootstrap_servers, exc)
                    raise BrokerUnavailable(
                        "the broker is unavailable", PublishOutcome(refused=list(range(count)))
                    ) from exc
                self._producer = producer
        return self._producer

    async def publish(self, messages: Sequence[Message]) -> int:
        """Send every message and wait for acks=all; returns how many, or raises PublishIncomplete.

        Adding stops at the first message the producer refuses; the ones before it are still
        awaited, so the outcome is exact for every index. The messages join the batches every
        concurrent request shares (:mod:`services.gateway.coalescer`); a batch's fate is that of
        each message in it."""
        coalescer = await self._ensure_coalescer(len(messages))
        with _producer_span(self.topic, len(messages)) as headers:
            headers.append(received_at_header())  # processing latency counts from here
            # Adding stops at the first message the producer refuses (its size).
            delivered, send_error = coalescer.add_many(messages, headers)
            outcome = PublishOutcome()
            errors: list[BaseException] = [send_error] if send_error else []
            if delivered:
                batches = set(delivered)  # a request's messages share a few batches
                await asyncio.wait(batches, timeout=self.timeout_s)
                if send_error is None and all(b.done() and b.exception() is None for b in batches):
                    return len(messages)
                failures: dict[int, BaseException] = {}
                for index, future in enumerate(delivered):
                    if not future.done():
                        outcome.unknown.append(index)
                    elif (failure := future.exception()) is not None:
                        outcome.refused.append(index)
                        failures[id(future)] = failure
                    else:
                        outcome.acknowledged.append(index)
                errors.extend(failures.values())
        outcome.refused.extend(range(len(delivered), len(messages)))
        outcome.refused.sort()
        if len(outcome.acknowledged) == len(messages):
            return len(messages)
        causes = ", ".join(sorted({type(e).__name__ for e in errors})) or "no acknowledgement in time"
        log.warning(
            "publish incomplete: %d of %d acknowledged, %d refused, %d unknown (%s)",
            len(outcome.acknowledged),
            len(messages),
            len(outcome.refused),
            len(outcome.unknown),
            "; ".join(repr(e) for e in errors[:3]) or causes,
        )
        if errors and not outcome.unknown and all(isinstance(e, MESSAGE_CAUSED) for e in errors):
            raise MessageRefused(f"the broker refused {len(outcome.refused)} events ({causes})", outcome)
        raise BrokerUnavailable(f"the broker did not acknowledge every event ({causes})", outcome)

    async def _ensure_coalescer(self, count: int) -> BatchCoalescer:
        producer = await self._ensure_producer(count)
        if self._coalescer is None or self._coalescer.producer is not producer:
            try:
                partitions = await asyncio.wait_for(producer.partitions_for(self.topic), self.timeout_s)
            except (KafkaError, TimeoutError) as exc:
                raise BrokerUnavailable(
                    "the broker is unavailable", PublishOutcome(refused=list(range(count)))
                ) from exc
            self._coalescer = BatchCoalescer(producer, self.topic, sorted(partitions))
        return self._coalescer

    async def check_ready(self) -> None:
        producer = await self._ensure_producer(0)
        await asyncio.wait_for(producer.partitions_for(self.topic), timeout=2)

    async def close(self) -> None:
        if self._coalescer is not None:
            await self._coalescer.close()
            self._coalescer = None
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
