"""What the processor tells about each batch: the traces it continues and its two latencies.

Processing latency (`event_processor_latency_seconds`) runs from when the fleet received the
event to when it was stored: the gateway stamps the receive time in the `received_at_ms`
header; a message published straight to Kafka (the load generator, another producer) has the
record's own timestamp instead, which its producer sets when sending. The event's `timestamp`
says when the door was used; how far that lies behind storage
(`event_processor_event_time_delay_seconds`) measures the devices and replays, not the fleet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka.errors import IllegalStateError, KafkaError
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link
from prometheus_client import Histogram

from services.gateway.event_processor import metrics
from shared.tracing import tracing_active

log = logging.getLogger(__name__)

RECEIVED_AT_HEADER = "received_at_ms"
# A batch span with a link per message would be huge for big batches; the first ones suffice
# to reach the producers' traces (each message's own consumer span links the rest).
MAX_LINKS = 128


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    """Reads W3C trace context from a record's `[(key, bytes)]` headers."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def received_at_header(now_s: float | None = None) -> tuple[str, bytes]:
    """The header the gateway adds to each event it publishes."""
    return (RECEIVED_AT_HEADER, str(int((now_s if now_s is not None else time.time()) * 1000)).encode())


def received_at(record: Any) -> float | None:
    """Epoch seconds the fleet received the message: the gateway's header, else the record time."""
    for key, value in record.headers or ():
        if key == RECEIVED_AT_HEADER:
            try:
                stamp_ms = int(value)
            except (TypeError, ValueError):
                break  # a foreign producer's junk header: fall back to the record time
            if 0 < stamp_ms < 2**53:  # a plausible epoch in ms, not 0, negative or absurd
                return stamp_ms / 1000.0
            break
    stamp = getattr(record, "timestamp", None)
    return stamp / 1000.0 if isinstance(stamp, int) and stamp > 0 else None


def received_times(records: Sequence[Any]) -> list[float | None]:
    """`received_at` of each record: a record without headers (what a plain producer sends)
    is read inline, since a call per record was a measurable part of the processor's CPU."""
    return [
        record.timestamp / 1000.0
        if not record.headers and type(record.timestamp) is int and record.timestamp > 0
        else received_at(record)
        for record in records
    ]


def batch_links(records: Iterable[Any]) -> list[Link]:
    """A link to the context carried by each message (up to MAX_LINKS); none while tracing is off,
    so an untraced processor does not parse headers for nothing."""
    links: list[Link] = []
    if not tracing_active():
        return links
    for record in records:
        if len(links) >= MAX_LINKS:
            break
        if not record.headers:
            continue
        ctx = propagate.extract(list(record.headers), getter=_GETTER)
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links


def observe_many(histogram: Histogram, values: Sequence[float] | npt.NDArray[np.float64]) -> None:
    """`histogram.observe(v)` for every v of `values`, as one update per bucket.

    prometheus_client observes one value at a time (a lock and a bucket scan each, about 1 µs),
    which for the processor's two latencies was a tenth of its CPU per event; it has no bulk
    call, so this one reads the histogram's bounds and adds to its buckets and sum the counts
    numpy computes for the whole batch. The exposition is the same as observing one by one
    (`tests/unit/gateway/test_processor_observe.py` compares them), and that test pins the
    private attributes used here, so an upgrade of prometheus_client that renames them fails it.
    """
    if not len(values):
        return
    array = np.asarray(values, dtype=np.float64)
    bounds = histogram._upper_bounds
    # Bucket i holds the values <= bounds[i] and > bounds[i-1]: `observe`'s first bound >= v.
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(array.sum()))
    buckets = histogram._buckets
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))


def observe_latencies(event_times: Sequence[datetime], received: Sequence[float | None]) -> None:
    """Both latencies of a batch of stored events: their event times and the epoch seconds each
    was received (None when unknown), in the same order. Computed on arrays: a datetime
    subtraction per event cost more than the histograms' update."""
    now = time.time()
    got = np.fromiter((stamp for stamp in received if stamp is not None), dtype=np.float64)
    observe_many(metrics.EVENT_LATENCY, np.maximum(now - got, 0.0))
    happened = np.fromiter(map(datetime.timestamp, event_times), dtype=np.float64, count=len(event_times))
    observe_many(metrics.EVENT_TIME_DELAY, np.maximum(now - happened, 0.0))


class ConsumerLag:
    """Consumer lag per partition, for `event_processor_consumer_lag_{messages,seconds}`.

    Messages: the high watermark of the last fetch minus the consumer's position (Tansu's
    `end_offsets()` is wrong, the fetch high watermark is not). Seconds: while messages wait,
    the time since the newest processed message of the partition was produced, an upper bound
    of how long the oldest waiting one has waited, which keeps growing while consumption is
    stuck; 0 when caught up.
    """

    def __init__(self) -> None:
        self._last_produced: dict[tuple[str, int], float] = {}
        self._labelled: set[tuple[str, int]] = set()

    def note_batch(self, records: Sequence[Any], received: Sequence[float | None]) -> None:
        """`received`: `received_at` of each record, in the same order."""
        now = time.time()
        last = self._last_produced
        for record, stamp in zip(records, received, strict=True):
            key = (record.topic, record.partition)
            stamp = stamp or now
            if stamp > last.get(key, 0.0):
                last[key] = stamp

    async def refresh(self, consumer: Any) -> dict[tuple[str, int], tuple[int, float]]:
        now = time.time()
        seen: dict[tuple[str, int], tuple[int, float]] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched from it yet
            try:
                position = await consumer.position(tp)
            except (IllegalStateError, KafkaError) as exc:  # unassigned meanwhile (rebalance)
                log.debug("no position for %s: %s; next refresh", tp, exc)
                continue
            behind = max(0, int(highwater) - int(position))
            key = (tp.topic, tp.partition)
            last = self._last_produced.get(key)
            seconds = max(0.0, now - last) if behind and last is not None else 0.0
            seen[key] = (behind, seconds)
        for key, (behind, seconds) in seen.items():
            labels = (key[0], str(key[1]))
            metrics.CONSUMER_LAG_MESSAGES.labels(*labels).set(behind)
            metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(seconds)
        for key in self._labelled - set(seen):  # partitions another consumer owns now
            labels = (key[0], str(key[1]))
            metrics.CONSUMER_LAG_MESSAGES.remove(*labels)
            metrics.CONSUMER_LAG_SECONDS.remove(*labels)
        self._labelled = set(seen)
        return seen
