"""Exactly-once storage through crashes: REST → Kafka → processor processes killed mid-stream → PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from tests.factories import event_dict
from tools.dev.fleet import ServiceProcess

pytestmark = pytest.mark.e2e

BATCHES = 60
BATCH = 250  # 15,000 distinct events


async def stored_ids(dsn: str) -> tuple[int, set[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT event_id FROM access_events")
        return len(rows), {r["event_id"] for r in rows}
    finally:
        await conn.close()


def test_sigkilled_processors_store_every_event_exactly_once(
    database_url: str, kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ACCESS_EVENTS_TOPIC": topic_name,
        "ACCESS_EVENTS_DLQ_TOPIC": topic_name + ".dlq",
        "ACCESS_EVENTS_PARTITIONS": "4",
        "EVENT_PROCESSOR_GROUP_ID": topic_name + "-processor",
        "EVENT_PROCESSOR_BATCH_SIZE": "400",
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    }
    gateway = start_service(
        "services.gateway", {**env, "GATEWAY_RUN_EVENT_PROCESSOR": "false"}, wait_ready=True
    )
    processors = [start_service("services.gateway.event_processor", env)]
    produced: set[str] = set()
    kills = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for n in range(BATCHES):
            batch = [event_dict() for _ in range(BATCH)]
            response = client.post("/api/v1/events", json=batch)
            assert response.status_code == 202, response.text
            produced.update(e["event_id"] for e in batch)
            if n % 7 == 3:
                # A client retry: the same events again; they must still be stored once.
                assert client.post("/api/v1/events", json=batch[: BATCH // 2]).status_code == 202
            if n in (12, 27, 42):
                # Crash the processor in the middle of the stream (no shutdown hooks run).
                time.sleep(0.3)
                victim = processors.pop(0)
                victim.kill()
                kills += 1
                processors.append(start_service("services.gateway.event_processor", env))
            if n == 30:
                # A second instance: the two share the four partitions.
                processors.append(start_service("services.gateway.event_processor", env))
    assert kills == 3

    deadline = time.monotonic() + 90
    count, ids = asyncio.run(stored_ids(database_url))
    while time.monotonic() < deadline and count < len(produced):
        time.sleep(0.5)
        count, ids = asyncio.run(stored_ids(database_url))
    logs = "\n".join(p.logs(20) for p in processors)
    assert count == len(produced), f"stored {count} of {len(produced)}\n{logs}"
    assert ids == produced  # nothing lost, nothing invented, no event twice

    # Several instances really shared the work: each live one reports its own progress.
    statuses = [httpx.get(p.url + "/status", timeout=5).json() for p in processors]
    assert all(s["consuming"] for s in statuses), statuses
    assert sum(s["stored"] for s in statuses) > 0

    # The metrics named in docs/reference.md, as Prometheus reads them.
    metrics = httpx.get(processors[-1].url + "/metrics", timeout=5).text
    for name in (
        "event_processor_events_processed_total",
        "event_processor_latency_seconds_bucket",
        'event_processor_events_failed_total{reason="invalid_json"}',
        'circuit_breaker_state{name="database"}',
    ):
        assert name in metrics, name
