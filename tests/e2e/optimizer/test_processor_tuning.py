"""The event processor's `/admin/tuning`: guarded, bounds-checked, and applied to the running loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import event_dict
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = pytest.mark.e2e

TOKEN = "tuning-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _publish(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for _ in range(count):
            await producer.send(topic, json.dumps(event_dict()).encode())
        await producer.flush()
    finally:
        await producer.stop()


def _sample(metrics_text: str, name: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


def _batch_histogram(metrics_text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "event_processor_batch_records":
            return {
                s.labels.get("le", s.name): s.value
                for s in family.samples
                if s.name.endswith("_bucket") or s.name.endswith("_count")
            }
    return {}


@pytest.mark.parametrize("module", ["services.gateway.event_processor", "services.gateway"])
def test_tuning_is_guarded_validated_and_applied_live(
    module: str,
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
        "ADMIN_TOKEN": TOKEN,
    }
    service = start_service(module, env, wait_ready=True)
    url = service.url + "/admin/tuning"

    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 403
    assert httpx.put(url, json={"batch_size": 5}, timeout=5).status_code == 401

    current = httpx.get(url, headers=AUTH, timeout=5)
    assert current.status_code == 200
    assert current.json()["bounds"]["batch_size"] == {"min": 1, "max": 100_000}

    for bad in ({"batch_size": 0}, {"batch_size": 100_001}, {"flush_interval_ms": -1}, {}, {"batch": 5}):
        refused = httpx.put(url, json=bad, headers=AUTH, timeout=5)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"]["code"] == "validation_error"

    changed = httpx.put(url, json={"batch_size": 3, "flush_interval_ms": 20}, headers=AUTH, timeout=5)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["batch_size"], changed.json()["flush_interval_ms"]) == (3, 20)
    assert httpx.get(url, headers=AUTH, timeout=5).json()["batch_size"] == 3

    # The change takes effect from the next poll; a poll already waiting (up to the previous
    # flush interval, longer on a loaded machine) may still ask for the old size, so let it end.
    time.sleep(0.5)
    # The running loop uses the new size: 40 events arrive, every batch holds at most 3.
    asyncio.run(_publish(kafka_bootstrap, topic_name, 40))
    deadline = time.monotonic() + 30
    stored = 0.0
    while time.monotonic() < deadline and stored < 40:
        time.sleep(0.2)
        stored = _sample(
            httpx.get(service.url + "/metrics", timeout=5).text, "event_processor_events_processed_total"
        )
    assert stored == 40
    histogram = _batch_histogram(httpx.get(service.url + "/metrics", timeout=5).text)
    # All batches fall in the "<= 10" bucket; with the default size (5000) they would not need to.
    assert histogram["10.0"] == histogram["+Inf"] >= 14
