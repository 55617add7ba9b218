"""One access event travels the real path: REST → Kafka → processor → PostgreSQL → summary."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.factories import event_dict
from tools.dev.fleet import ServiceProcess, service_env


def test_posted_event_reaches_the_summary_through_the_gateway(
    database_url: str, kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> None:
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
    }
    analytics = start_service("services.analytics", env, wait_ready=True)
    gateway = start_service("services.gateway", {**env, "ANALYTICS_URL": analytics.url}, wait_ready=True)

    event = event_dict(timestamp="2025-01-01T12:00:00.123456", access_result="granted", door_id="front")
    del event["badge_status"], event["badge_id"]
    response = httpx.post(f"{gateway.url}/api/v1/events", json=event, timeout=10)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1}

    deadline = time.monotonic() + 2.0
    summary: dict[str, object] = {}
    while time.monotonic() < deadline:
        summary = httpx.get(f"{gateway.url}/api/v1/analytics/summary", timeout=5).json()
        if summary.get("total_events") == 1:
            break
        time.sleep(0.05)
    assert summary["total_events"] == 1, summary
    assert summary["granted"] == 1
    assert summary["top_doors"] == [{"door_id": "front", "events": 1, "denied": 0}]

    # The same event again (a client retry) is accepted by the gateway but stored once.
    assert httpx.post(f"{gateway.url}/api/v1/events", json=[event], timeout=10).status_code == 202
    time.sleep(0.5)
    assert httpx.get(f"{gateway.url}/api/v1/analytics/summary", timeout=5).json()["total_events"] == 1


def test_every_service_serves_the_common_endpoints(
    database_url: str,
    replica_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "TIMESCALE_URL": replica_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ACCESS_EVENTS_TOPIC": topic_name,
        "EVENT_PROCESSOR_GROUP_ID": topic_name + "-g",
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    }
    services = {
        "gateway": start_service("services.gateway", env, wait_ready=True),
        "analytics": start_service("services.analytics", env, wait_ready=True),
        "optimizer": start_service("services.optimizer", env, wait_ready=True),
        "replicator": start_service("services.replicator", env, wait_ready=True),
        "event_processor": start_service("services.gateway.event_processor", env, wait_ready=True),
    }
    for name, service in services.items():
        health = httpx.get(service.url + "/health", timeout=5)
        assert health.status_code == 200
        assert health.json()["service"] == name
        assert health.json()["status"] == "ok"
        ready = httpx.get(service.url + "/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        metrics = httpx.get(service.url + "/metrics", timeout=5)
        assert metrics.status_code == 200
        assert "# TYPE" in metrics.text
        assert httpx.get(service.url + "/openapi.json", timeout=5).status_code == 200
        missing = httpx.get(service.url + "/no/such/path", timeout=5)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert missing.headers["x-request-id"]
