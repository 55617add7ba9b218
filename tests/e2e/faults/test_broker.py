"""The broker crashes: every event answered 202 is stored exactly once after it comes back.

The embedded broker `make run` starts keeps its log on disk; the test of the memory log shows
what that default prevents (the same crash loses every event not yet stored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.faults._harness import (
    Answer,
    Ledger,
    Traffic,
    breaker_states,
    dead_letters,
    figures,
    ingest_request,
    wait_breakers_closed,
    wait_stored,
)
from tests.factories import event_dict
from tools.dev.embedded import EmbeddedKafka
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

GATEWAY = "services.gateway"
PROCESSOR = "services.gateway.event_processor"


def _post_all(gateway: ServiceProcess, batches: int, batch: int) -> Ledger:
    ledger = Ledger()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(batches):
            events = [event_dict() for _ in range(batch)]
            sent = time.monotonic()
            response = client.post("/api/v1/events", json=events)
            assert response.status_code == 202, response.text
            ledger.add(Answer(sent, response.status_code, tuple(e["event_id"] for e in events)))
    return ledger


@pytest.mark.parametrize("storage", ["disk", "memory"])
def test_events_acknowledged_before_a_broker_crash_are_stored_once_it_is_back(
    storage: str,
    tmp_path: Path,
    database_url: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    broker = EmbeddedKafka(
        storage_dir=tmp_path / "broker" if storage == "disk" else None, log_path=tmp_path / "tansu.log"
    ).start()
    try:
        env = service_env(database_url, broker.bootstrap_servers, topic_name)
        # Ingestion only: nothing consumes until the broker has crashed and come back.
        gateway = start_service(GATEWAY, {**env, "GATEWAY_RUN_EVENT_PROCESSOR": "false"}, wait_ready=True)
        ledger = _post_all(gateway, batches=20, batch=100)
        acknowledged = ledger.acknowledged
        assert wait_stored(database_url, acknowledged, timeout_s=0) == (0, 0)

        fault_at = time.monotonic()
        broker.kill_broker()
        broker.start()
        back_at = time.monotonic()
        start_service(PROCESSOR, env, wait_ready=True)
        rows, distinct = wait_stored(database_url, acknowledged, timeout_s=30 if storage == "disk" else 5)
        figures(
            f"broker SIGKILLed before the processor stored anything ({storage} log)",
            ledger,
            fault_at=fault_at,
            back_at=back_at,
            stored_rows=rows,
            stored_distinct=distinct,
            dead_lettered=dead_letters(broker.bootstrap_servers, topic_name + ".dlq", idle_s=1.0),
            breakers={},
        )
    finally:
        broker.stop()
    if storage == "disk":
        assert (rows, distinct) == (len(acknowledged), len(acknowledged))
    else:
        assert distinct == 0  # the memory log forgot every acknowledged event


@pytest.mark.parametrize(
    ("outage_s", "request_timeout_ms"),
    [(3.0, 10_000), (8.0, 2_000)],
    ids=["shorter-than-the-request-timeout", "longer-than-the-request-timeout"],
)
def test_broker_restarted_during_sustained_ingest(
    outage_s: float,
    request_timeout_ms: int,
    durable_broker: EmbeddedKafka,
    database_url: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """A short outage is waited out (the producer retries within KAFKA_REQUEST_TIMEOUT_MS); a long
    one is answered 503 with Retry-After and opens the `kafka` breaker, which closes again."""
    env = {
        **service_env(database_url, durable_broker.bootstrap_servers, topic_name),
        "KAFKA_REQUEST_TIMEOUT_MS": str(request_timeout_ms),
    }
    gateway = start_service(GATEWAY, env, wait_ready=True)
    traffic = Traffic(ingest_request(batch=20), gateway.url)
    traffic.start()
    seen: set[str] = set()
    try:
        time.sleep(3)
        fault_at = time.monotonic()
        durable_broker.kill_broker()
        while time.monotonic() - fault_at < outage_s:
            seen.add(breaker_states(gateway.url).get("kafka", "missing"))
            time.sleep(0.25)
        durable_broker.start()
        back_at = time.monotonic()
        deadline = back_at + 40
        while time.monotonic() < deadline:
            recovered = traffic.ledger.first_success_after(back_at)
            if recovered is not None and time.monotonic() - recovered >= 5:
                break
            time.sleep(0.2)
    finally:
        ledger = traffic.stop()
    rows, distinct = wait_stored(database_url, ledger.acknowledged)
    result = figures(
        f"broker SIGKILLed for {outage_s:g} s during sustained ingest "
        f"(KAFKA_REQUEST_TIMEOUT_MS={request_timeout_ms})",
        ledger,
        fault_at=fault_at,
        back_at=back_at,
        stored_rows=rows,
        stored_distinct=distinct,
        dead_lettered=dead_letters(durable_broker.bootstrap_servers, topic_name + ".dlq"),
        breakers=wait_breakers_closed(gateway.url, ["kafka", "database"]),
        kafka_breaker_states_during_outage=sorted(seen),
        statuses_during_outage=sorted({a.status for a in ledger.snapshot() if fault_at <= a.at < back_at}),
    )
    assert result["acknowledged"] > 0
    assert result["recovery_seconds"] is not None, gateway.logs()
    assert (result["lost"], result["duplicated"], result["dead_lettered"]) == (0, 0, 0), gateway.logs()
    assert (result["5xx_before_fault"], result["5xx_after_recovery"]) == (0, 0)
    assert set(result["breakers_after"].values()) == {"closed"}
    if outage_s * 1000 > request_timeout_ms:
        assert "open" in seen
        assert set(result["statuses_during_outage"]) <= {202, 503}
