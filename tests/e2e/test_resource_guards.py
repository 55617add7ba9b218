"""Resource guards in real service processes: a tiny MAX_MEMORY trips them; background work waits."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.dev.fleet import ServiceProcess, service_env

pytestmark = pytest.mark.e2e

# A Python service process is far above 50 % of 64 MiB (the smallest MAX_MEMORY allowed).
TINY = {"MAX_MEMORY": "64", "MEMORY_WARNING_THRESHOLD": "0.5", "MAX_CPU_CORES": "64"}
ROOMY = {"MAX_MEMORY": "1000000", "MAX_CPU_CORES": "64"}


def metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def history_length(url: str) -> int:
    summary = httpx.get(url + "/api/v1/performance/summary", timeout=5).json()
    return int(summary["history_length"])


def test_analytics_over_its_memory_limit_warns_and_holds_snapshots(
    database_url: str, start_service: Callable[..., ServiceProcess]
) -> None:
    common = {"DATABASE_URL": database_url, "CACHE_TYPE": "memory", "PERFORMANCE_SNAPSHOT_INTERVAL": "0.2"}
    tight = start_service("services.analytics", {**common, **TINY}, wait_ready=True, timeout_s=60)
    roomy = start_service("services.analytics", {**common, **ROOMY}, wait_ready=True, timeout_s=60)
    time.sleep(2.0)  # ten snapshot intervals

    assert metric(tight.url, "resource_throttled", resource="memory") == 1.0
    assert metric(tight.url, "resource_threshold_crossings_total", resource="memory") == 1.0
    ratio = metric(tight.url, "resource_memory_ratio")
    assert ratio is not None
    assert ratio > 0.5
    assert "memory use at" in tight.logs()
    assert "holding background work" in tight.logs()
    assert history_length(tight.url) == 0  # snapshots wait for the throttle to lift

    assert metric(roomy.url, "resource_throttled", resource="memory") == 0.0
    assert history_length(roomy.url) >= 3
    assert "holding background work" not in roomy.logs()


def test_gateway_and_standalone_processor_guard_their_memory(
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
        **TINY,
    }
    gateway = start_service("services.gateway", env, wait_ready=True, timeout_s=60)
    processor = start_service("services.gateway.event_processor", env, wait_ready=True, timeout_s=60)
    for service in (gateway, processor):
        assert metric(service.url, "resource_throttled", resource="memory") == 1.0, service.module
        assert metric(service.url, "resource_threshold_crossings_total", resource="memory") == 1.0
        assert "holding background work" in service.logs()
    assert "gateway memory use at" in gateway.logs()
    assert "event_processor memory use at" in processor.logs()
