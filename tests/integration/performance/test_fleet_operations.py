"""Every service times its own work: processor batches, replicator cycles, uploads, queries, caches.

Each test runs the real code path against real PostgreSQL (and the broker for the processor)
and reads the process's PerformanceMonitor, which is what /metrics, the performance summary and
the thresholds see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from services.analytics.app import create_app as create_analytics
from services.analytics.settings import AnalyticsSettings
from services.gateway.event_processor.observe import RECEIVED_AT_HEADER
from services.gateway.event_processor.service import ProcessorService
from services.replicator.service import ReplicatorService
from services.replicator.settings import ReplicatorSettings
from shared.breaker import BreakerRegistry
from shared.db import create_pool
from shared.event_store import store_events
from shared.events import AccessEvent
from shared.kafka import create_consumer
from shared.performance import get_performance_monitor
from tests.factories import event_dict
from tests.integration.gateway.test_event_processor import processor_settings, producer_for, wait_rows
from tests.integration.performance.receivers import SlackReceiver

pytestmark = pytest.mark.integration


def _count(name: str) -> int:
    stats = get_performance_monitor().operation_stats().get(name)
    return stats.count if stats is not None else 0


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_processor_times_each_batch_step_and_measures_latency_from_receipt(
    database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    before = {
        n: _count(n) for n in ("processor.batch", "processor.parse", "processor.store", "processor.commit")
    }
    before_dl = _count("processor.dead_letter")
    latency_sum = _sample("event_processor_latency_seconds_sum")
    delay_sum = _sample("event_processor_event_time_delay_seconds_sum")
    settings = processor_settings(
        database_url, kafka_bootstrap, topic_name, EVENT_PROCESSOR_LAG_REFRESH_S=0.2
    )
    pool = await create_pool(database_url, min_size=0, max_size=2)
    registry = BreakerRegistry.from_dict({"breakers": {"database": {"failure_threshold": 2}}})
    service = ProcessorService(settings, pool, registry.get("database"))
    service.start()
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    received = str(int((time.time() - 0.25) * 1000)).encode()
    try:
        producer = await producer_for(kafka_bootstrap, topic_name)
        try:
            # A backdated event (a day old) received a quarter of a second ago.
            old = event_dict(timestamp=(datetime.now(UTC) - timedelta(days=1)).isoformat())
            headers = [("traceparent", traceparent), (RECEIVED_AT_HEADER, received)]
            await producer.send_and_wait(topic_name, orjson.dumps(old), key=b"d", headers=headers)
            await producer.send_and_wait(topic_name, b"{broken", key=b"bad", headers=headers)
        finally:
            await producer.stop()
        assert await wait_rows(database_url, 1) == 1
        for _ in range(100):
            if _count("processor.dead_letter") > before_dl and service.processor is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # a lag refresh after the batch
        lag = {
            p: _sample("event_processor_consumer_lag_messages", topic=topic_name, partition=str(p))
            for p in (0, 1)
        }
    finally:
        await service.stop()
        await pool.close()

    for name, count in before.items():
        assert _count(name) > count, name
    assert _count("processor.dead_letter") > before_dl
    assert _count("db.insert_events") >= 1
    # Processing latency counts from the receive stamp (~0.25 s), not from the day-old timestamp.
    latency = _sample("event_processor_latency_seconds_sum") - latency_sum
    assert 0.2 <= latency < 30, latency
    assert _sample("event_processor_event_time_delay_seconds_sum") - delay_sum > 86_000
    assert lag == {0: 0.0, 1: 0.0}  # caught up: the gauges exist per partition and read 0

    # The dead letter keeps the original headers (trace context, receive time) before its own.
    consumer = create_consumer(
        kafka_bootstrap,
        topic_name + ".dlq",
        group_id=topic_name + "-dlq",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        dead = None
        deadline = time.monotonic() + 15
        while dead is None and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                dead = records[0]
    finally:
        await consumer.stop()
    assert dead is not None
    headers = dict(dead.headers)
    assert headers["traceparent"] == traceparent
    assert headers[RECEIVED_AT_HEADER] == received
    assert headers["dlq.reason"] == b"invalid_json"


async def test_replicator_times_cycles_batches_and_their_steps(database_url: str, replica_url: str) -> None:
    names = (
        "replicator.cycle",
        "replicator.batch",
        "replicator.read",
        "replicator.copy",
        "replicator.watermark",
    )
    before = {n: _count(n) for n in names}
    source = await asyncpg.connect(database_url)
    try:
        await store_events(source, [AccessEvent.model_validate(event_dict()) for _ in range(20)])
    finally:
        await source.close()
    service = ReplicatorService(
        ReplicatorSettings(DATABASE_URL=database_url, TIMESCALE_URL=replica_url, REPLICATION_BATCH_SIZE=8)
    )
    await service.open()
    cycles = 0
    try:
        # Rows become copyable once no older transaction of the server is open (the watermark
        # is commit order); another client of a shared server can delay that for a moment.
        copied = 0
        deadline = time.monotonic() + 20
        while copied < 20 and time.monotonic() < deadline:
            copied += await service.run_once()
            cycles += 1
    finally:
        await service.close()
    assert copied == 20
    assert _count("replicator.cycle") == before["replicator.cycle"] + cycles
    assert _count("replicator.batch") - before["replicator.batch"] >= 3  # 8 + 8 + 4 rows
    for name in names[2:]:
        assert _count(name) > before[name], name
    assert _count("db.replication_backlog") >= 1


MONITORING_YAML = """
snapshots: {{interval_seconds: 0.2, history_size: 10}}
evaluation: {{interval_seconds: 0.1}}
alerts:
  cooldown_seconds: 0
  max_per_minute: 100
  slack: {{webhook_url: "{slack}"}}
thresholds:
  - metric: upload.rows_per_second
    statistic: p50
    min: 1.0e+12
    window_seconds: 60
    min_samples: 1
  - metric: http.GET /api/v1/analytics/summary
    statistic: max
    max: 0.0
    window_seconds: 60
    min_samples: 1
"""


@pytest.fixture
async def analytics(
    database_url: str, tmp_path: Path, slack_receiver: SlackReceiver
) -> AsyncIterator[httpx.AsyncClient]:
    config = tmp_path / "monitoring.yaml"
    config.write_text(MONITORING_YAML.format(slack=slack_receiver.url))
    settings = AnalyticsSettings(
        DATABASE_URL=database_url, MONITORING_CONFIG=config, TRACING_ENABLED=False, ANALYTICS_MAX_WORKERS=1
    )
    app = create_analytics(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as http,
    ):
        yield http


async def test_analytics_times_routes_queries_caches_and_uploads_and_judges_them(
    analytics: httpx.AsyncClient, slack_receiver: SlackReceiver
) -> None:
    csv = "Timestamp,Person ID,Token ID,Device name,Access result\n" + "".join(
        f"2025-01-0{1 + i % 5} 10:00:0{i % 10},p{i},b{i},d{i % 3},Granted\n" for i in range(40)
    )
    answer = await analytics.post("/api/v1/uploads", files={"file": ("e.csv", csv.encode(), "text/csv")})
    assert answer.status_code == 201, answer.text
    assert (await analytics.get("/api/v1/analytics/summary")).status_code == 200
    assert (await analytics.get("/no/such/path")).status_code == 404

    ops = (await analytics.get("/api/v1/performance/summary")).json()["operations"]
    for name in (
        "http.POST /api/v1/uploads",
        "http.GET /api/v1/analytics/summary",
        "http.GET <unmatched>",
        "upload.store",
        "upload.parse_validate",
        "upload.copy",
        "db.analytics_summary",
        "cache.compute.summary",
    ):
        assert name in ops, (name, sorted(ops))
    assert ops["upload.rows_per_second"]["unit"] == "per_second"
    metrics = (await analytics.get("/metrics")).text
    assert (
        'performance_operation_count{operation="http.GET /api/v1/analytics/summary",unit="seconds"}'
        in metrics
    )

    # Both thresholds fire from real work: the upload speed and the timed route.
    for _ in range(100):
        texts = [m["text"] for m in slack_receiver.messages]
        if len(texts) >= 2:
            break
        await asyncio.sleep(0.05)
    assert any(t.startswith("[FIRING] upload.rows_per_second p50 on analytics") for t in texts), texts
    assert any(t.startswith("[FIRING] http.GET /api/v1/analytics/summary max on analytics") for t in texts), (
        texts
    )
