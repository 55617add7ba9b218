"""The optimizer's PROMETHEUS_URL mode against a real Prometheus scraping a real event processor.

A known number of events goes through the processor while Prometheus scrapes it every second
(`job` = "event_processor", the name the optimizer queries). The optimizer's reported signals
must then agree with the processor's own `/metrics`: every event of the burst falls inside the
optimizer's PromQL window, so rate x window is the burst (up to PromQL's extrapolation at the
window's end), and ratios and quantiles equal those computed from the raw counters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.optimizer.scrape import bucket_quantile
from tests.factories import event_dict
from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess, service_env
from tools.dev.prometheus import instant, prometheus_binary, scrape_metrics, start_prometheus

pytestmark = pytest.mark.e2e

TOKEN = "optimizer-prometheus-token"
EVENTS = 3_000
# The optimizer's PromQL window: max(15 s, OPTIMIZER_INTERVAL x 2, 30 s) in optimizer.py.
WINDOW_S = 30.0
BASELINE_SCRAPES = 8
PROCESSED = 'event_processor_events_processed_total{job="event_processor"}'


async def _publish(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, count, 250):
            now = datetime.now(UTC).isoformat()
            for _ in range(min(250, count - start)):
                await producer.send(topic, json.dumps(event_dict(timestamp=now)).encode())
            await producer.flush()
            await asyncio.sleep(0.05)  # several batches, so the batch histogram has more than one
    finally:
        await producer.stop()


def test_optimizer_reads_processor_signals_through_prometheus(
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
) -> None:
    binary = prometheus_binary()
    processor = start_service(
        "services.gateway.event_processor",
        service_env(database_url, kafka_bootstrap, topic_name) | {"ADMIN_TOKEN": TOKEN},
        wait_ready=True,
    )
    prom, prom_url = start_prometheus(binary, {"event_processor": processor.url}, tmp_path)
    try:
        optimizer = start_service(
            "services.optimizer",
            {
                "ADMIN_TOKEN": TOKEN,
                "PROMETHEUS_URL": prom_url,
                "OPTIMIZER_ENABLED": "false",  # recommend only: the processor keeps its settings
                "OPTIMIZER_PROCESSOR_URL": processor.url,
                "ANALYTICS_URL": f"http://127.0.0.1:{free_port()}",  # nothing there, nothing scraped
                "REPLICATOR_URL": f"http://127.0.0.1:{free_port()}",  # no replicator either
                "OPTIMIZER_INTERVAL": "0.5",
                "OPTIMIZER_COOLDOWN": "1",
            },
            wait_ready=True,
        )
        # Prometheus holds several samples of the untouched processor (all counters 0) before the
        # burst: the window starts at zero, so PromQL does not extrapolate backwards, and the
        # samples span long enough that its extrapolation past the last one stays small.
        deadline = time.monotonic() + 30
        while not instant(
            prom_url, f"count_over_time({PROCESSED}[30s]) >= {BASELINE_SCRAPES}"
        ) or not instant(prom_url, f"{PROCESSED} == 0"):
            assert time.monotonic() < deadline, "prometheus never scraped the processor"
            time.sleep(0.3)
        burst_started = time.monotonic()
        asyncio.run(_publish(kafka_bootstrap, topic_name, EVENTS))

        deadline = time.monotonic() + 30
        while (scrape_metrics(processor.url).total("event_processor_events_processed_total") or 0) < EVENTS:
            assert time.monotonic() < deadline, processor.logs()
            time.sleep(0.2)
        raw = scrape_metrics(processor.url)
        # Wait until Prometheus has scraped the final counters (the last batch included: a read
        # before it skews the batch mean), then for an optimizer cycle that started after that.
        final_batches = raw.total("event_processor_batch_records_count")
        deadline = time.monotonic() + 15
        while not instant(
            prom_url, f'event_processor_batch_records_count{{job="event_processor"}} == {final_batches}'
        ):
            assert time.monotonic() < deadline, "prometheus never scraped the final batch count"
            time.sleep(0.2)
        # The cycle running now may have read before that scrape: wait for the one after it.
        cycles_then = httpx.get(optimizer.url + "/api/v1/optimizer/status", timeout=5).json()["cycles"]
        status: dict[str, Any] = {}
        signals: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = httpx.get(optimizer.url + "/api/v1/optimizer/status", timeout=5).json()
            signals = status["signals"]["services"].get("event_processor", {})
            if status["cycles"] >= cycles_then + 2 and signals.get("events_rate"):
                break
            time.sleep(0.3)
        read_after_s = time.monotonic() - burst_started
    finally:
        prom.terminate()
        prom.wait(timeout=20)

    assert read_after_s < WINDOW_S - 3, f"too slow ({read_after_s:.0f} s): the burst left the window"
    assert status["signal_source"] == "prometheus"
    assert "event_processor" not in status["signals"]["errors"], status["signals"]["errors"]
    assert signals.get("events_rate") is not None, status["signals"]
    # Analytics is not among Prometheus's targets: reported, and no signals invented for it.
    assert "analytics" not in status["signals"]["services"]
    assert 'no target with job="analytics"' in status["signals"]["errors"]["analytics"]
    assert raw.total("event_processor_events_processed_total") == EVENTS
    # Events stored per second over the window: the whole burst, plus at most PromQL's
    # extrapolation past the last scrape (at most 1.1 scrape intervals over a span of at least
    # BASELINE_SCRAPES intervals plus the burst).
    events_in_window = signals["events_rate"] * WINDOW_S
    assert 0.97 * EVENTS <= events_in_window <= 1.2 * EVENTS, (signals, status["signals"])

    batches = raw.total("event_processor_batch_records_count") or 0.0
    assert batches >= 2
    raw_mean = (raw.total("event_processor_batch_records_sum") or 0.0) / batches
    assert signals["batch_mean_records"] == pytest.approx(raw_mean, rel=0.02)

    for signal, histogram in (
        ("store_p95_s", "event_processor_store_seconds"),
        ("event_latency_p95_s", "event_processor_latency_seconds"),
    ):
        raw_p95 = bucket_quantile(0.95, sorted(raw.buckets(histogram).items()))
        assert raw_p95 is not None
        assert raw_p95 > 0
        assert signals[signal] == pytest.approx(raw_p95, rel=0.02, abs=1e-4), (signal, signals)

    memory = raw.value("resource_memory_ratio")
    assert memory is not None
    assert signals["memory_ratio"] == pytest.approx(memory, abs=0.05)
    assert 0 < signals["memory_ratio"] <= 1
