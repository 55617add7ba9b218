"""The proxy against a real analytics process: stop it → breaker opens → fast stale/503 → restart → closes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tools.dev.fleet import ServiceProcess

pytestmark = pytest.mark.e2e


def test_analytics_outage_and_recovery_through_the_gateway(
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    start_service: Callable[..., ServiceProcess],
) -> None:
    breakers = tmp_path / "breakers.yaml"
    breakers.write_text(
        yaml.safe_dump(
            {
                "breakers": {
                    "analytics": {
                        "failure_threshold": 3,
                        "wait_duration_in_open_state": 1.5,
                        "permitted_calls_in_half_open_state": 2,
                    }
                }
            }
        )
    )
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ACCESS_EVENTS_TOPIC": topic_name,
        "EVENT_PROCESSOR_GROUP_ID": topic_name + "-g",
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "CIRCUIT_BREAKER_CONFIG": str(breakers),
    }
    analytics = start_service("services.analytics", env, wait_ready=True)
    gateway = start_service(
        "services.gateway", {**env, "ANALYTICS_URL": analytics.url, "GATEWAY_RUN_EVENT_PROCESSOR": "false"}
    )
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        direct = httpx.get(analytics.url + "/api/v1/analytics/summary", timeout=10)
        fresh = client.get("/api/v1/analytics/summary")
        assert fresh.status_code == 200
        assert fresh.json() == direct.json()
        assert fresh.headers.get("x-cache") != "stale"

        analytics.stop()
        for _ in range(3):  # connection refused, counted by the breaker, answered stale meanwhile
            answer = client.get("/api/v1/analytics/summary")
            assert answer.status_code == 200
            assert answer.headers.get_list("x-cache") == ["stale"]
        snapshot = client.get("/breaker").json()["analytics"]
        assert snapshot["state"] == "open"
        assert snapshot["open"] == 1

        timings = []
        for path in ("/api/v1/analytics/summary", "/api/v1/analytics/anomalies", "/api/v1/cache/report"):
            started = time.perf_counter()
            answer = client.get(path)
            timings.append(time.perf_counter() - started)
            if path.endswith("summary"):
                assert answer.status_code == 200
                assert answer.headers["x-cache"] == "stale"
                assert answer.json() == fresh.json()
            else:
                assert answer.status_code == 503
                assert answer.json()["error"]["code"] == "upstream_unavailable"
                assert int(answer.headers["retry-after"]) >= 1
        assert max(timings) < 0.5  # answered from memory, nothing waited on the network

        analytics.start(wait_ready=True)
        time.sleep(1.6)  # the open-state wait
        for _ in range(2):  # the two trial calls
            assert client.get("/api/v1/analytics/anomalies").status_code == 200
        snapshot = client.get("/breaker").json()["analytics"]
        assert snapshot["state"] == "closed"
        assert (snapshot["open"], snapshot["half_open"], snapshot["closed"]) == (1, 1, 1)
        recovered = client.get("/api/v1/analytics/summary")
        assert recovered.status_code == 200
        assert recovered.headers.get("x-cache") != "stale"

        metrics = client.get("/metrics").text
        assert 'circuit_breaker_state{name="analytics"} 0.0' in metrics
        assert 'circuit_breaker_state_transitions_total{name="analytics",state="open"} 1.0' in metrics
