"""The processor's reading of message headers: receive time and trace context, hostile ones too."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.gateway.event_processor.observe import (
    MAX_LINKS,
    RECEIVED_AT_HEADER,
    batch_links,
    observe_many,
    received_at,
    received_at_header,
)

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class FakeRecord:
    """The attributes of aiokafka's ConsumerRecord the functions read."""

    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 1_700_000_000_123


def test_receive_time_comes_from_the_gateway_header_else_the_record_time() -> None:
    key, value = received_at_header(1_700_000_100.5)
    assert key == RECEIVED_AT_HEADER
    assert received_at(FakeRecord([(key, value)])) == 1_700_000_100.5
    assert received_at(FakeRecord()) == 1_700_000_000.123
    assert received_at(FakeRecord(timestamp=-1)) is None


def test_junk_receive_headers_fall_back_to_the_record_time() -> None:
    for junk in (b"", b"soon", b"-5", b"0", b"\x00\xff", b"9" * 400, b"1e3"):
        assert received_at(FakeRecord([(RECEIVED_AT_HEADER, junk)])) == 1_700_000_000.123, junk


def test_links_follow_valid_trace_context_and_skip_junk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.gateway.event_processor.observe.tracing_active", lambda: True)
    records = [
        FakeRecord([("traceparent", TRACEPARENT)]),
        FakeRecord([("traceparent", b"00-zzzz-not-a-trace-01")]),
        FakeRecord([("traceparent", b"\xff\xfe")]),
        FakeRecord([("traceparent", b"00-00000000000000000000000000000000-0000000000000000-01")]),
        FakeRecord(),
    ]
    links = batch_links(records)
    assert [format(link.context.trace_id, "032x") for link in links] == ["0af7651916cd43dd8448eb211c80319c"]
    # A huge batch does not make a huge span: links are capped.
    assert len(batch_links([FakeRecord([("traceparent", TRACEPARENT)])] * (MAX_LINKS + 50))) == MAX_LINKS
    # Tracing off: nothing to link, no headers parsed.
    monkeypatch.setattr("services.gateway.event_processor.observe.tracing_active", lambda: False)
    assert batch_links(records) == []


def test_observing_a_batch_at_once_exposes_what_observing_one_by_one_does() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.01, 0.5, 1, 60)
    single = Histogram("latency_seconds", "x", buckets=buckets, registry=one)
    batched = Histogram("latency_seconds", "x", buckets=buckets, registry=many)
    values = [0.0, 0.005, 0.0050001, 0.01, 0.3, 0.5, 1.0, 59.9, 60.0, 61.0, 1e9, 0.004] * 3
    for value in values:
        single.observe(value)
    observe_many(batched, values)
    observe_many(batched, [])

    def exposed(registry: CollectorRegistry) -> list[bytes]:
        return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]

    assert exposed(one) == exposed(many)
