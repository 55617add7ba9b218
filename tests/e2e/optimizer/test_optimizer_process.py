"""The optimizer process against a real event processor: it reads, decides, and applies or recommends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.factories import event_dict
from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = pytest.mark.e2e

TOKEN = "optimizer-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Publisher(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_flag = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False, linger_ms=5)
        await producer.start()
        try:
            while not self.stop_flag.is_set():
                for _ in range(500):
                    await producer.send(self.topic, json.dumps(event_dict()).encode())
                await producer.flush()
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()


@pytest.mark.parametrize("enabled", [True, False])
def test_optimizer_raises_a_full_batch_size(
    enabled: bool,
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
        "ADMIN_TOKEN": TOKEN,
    }
    processor = start_service("services.gateway.event_processor", env, wait_ready=True)
    tuning_url = processor.url + "/admin/tuning"
    assert httpx.put(tuning_url, json={"batch_size": 20}, headers=AUTH, timeout=5).status_code == 200
    optimizer = start_service(
        "services.optimizer",
        {
            "ADMIN_TOKEN": TOKEN,
            "OPTIMIZER_ENABLED": "true" if enabled else "false",
            "OPTIMIZER_PROCESSOR_URL": processor.url,
            "ANALYTICS_URL": f"http://127.0.0.1:{free_port()}",  # nothing there: reported, not fatal
            "REPLICATOR_URL": f"http://127.0.0.1:{free_port()}",  # no replicator either
            "OPTIMIZER_INTERVAL": "0.5",
            "OPTIMIZER_COOLDOWN": "1",
            "OPTIMIZER_CONFIRMATIONS": "2",
        },
        wait_ready=True,
    )
    publisher = Publisher(kafka_bootstrap, topic_name)
    publisher.start()
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            status = httpx.get(optimizer.url + "/api/v1/optimizer/status", timeout=5).json()
            if any(d["setting"] == "batch_size" and d["rule"] == "ai" for d in status["decisions"]):
                break
            time.sleep(0.3)
    finally:
        publisher.stop_flag.set()
        publisher.join(timeout=10)
    decision = next(d for d in status["decisions"] if d["setting"] == "batch_size" and d["rule"] == "ai")
    assert decision["service"] == "event_processor"
    assert decision["old"] == 20
    assert decision["new"] > 20
    assert "full" in decision["reason"]
    assert decision["signals"]["batch_mean_records"] >= 18
    assert status["signals"]["errors"]["analytics"]  # the missing service is reported
    assert "cpu_ratio" in status["signals"]["host"]
    current = httpx.get(tuning_url, headers=AUTH, timeout=5).json()["batch_size"]
    metrics = httpx.get(optimizer.url + "/metrics", timeout=5).text
    if enabled:
        assert decision["applied"] is True
        assert current > 20
        assert status["mode"] == "apply"
        assert (
            f'optimizer_setting{{service="event_processor",setting="batch_size"}} {float(current)}' in metrics
        )
    else:
        assert decision["applied"] is False
        assert current == 20  # only recommended
        assert (
            status["services"]["event_processor"]["settings"]["batch_size"]["recommended"] == decision["new"]
        )
        assert 'optimizer_setting{service="event_processor",setting="batch_size"} 20.0' in metrics
