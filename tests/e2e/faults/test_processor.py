"""The event processor is SIGKILLed three times during a sustained ingest: every 202 event is
stored exactly once (offsets are committed only after the batch is stored; a redelivered batch
is deduplicated by `event_id`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.faults._harness import (
    Traffic,
    dead_letters,
    figures,
    ingest_request,
    wait_breakers_closed,
    wait_stored,
)
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

PROCESSOR = "services.gateway.event_processor"


def test_processor_sigkilled_three_times_during_sustained_ingest(
    database_url: str, kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> None:
    env = service_env(database_url, kafka_bootstrap, topic_name)
    gateway = start_service(
        "services.gateway", {**env, "GATEWAY_RUN_EVENT_PROCESSOR": "false"}, wait_ready=True
    )
    processor = start_service(PROCESSOR, env, wait_ready=True)
    traffic = Traffic(ingest_request(batch=50), gateway.url)
    traffic.start()
    try:
        time.sleep(2)
        fault_at = time.monotonic()
        for _ in range(3):
            processor.kill()  # no shutdown hook runs: the batch in hand is neither stored nor committed
            processor = start_service(PROCESSOR, env)
            time.sleep(2)
        back_at = time.monotonic()
        time.sleep(2)
    finally:
        ledger = traffic.stop()
    rows, distinct = wait_stored(database_url, ledger.acknowledged)
    status = processor.logs(5)
    result = figures(
        "event processor SIGKILLed three times during sustained ingest",
        ledger,
        fault_at=fault_at,
        back_at=back_at,
        stored_rows=rows,
        stored_distinct=distinct,
        dead_lettered=dead_letters(kafka_bootstrap, topic_name + ".dlq"),
        breakers=wait_breakers_closed(processor.url, ["database"], path="/breakers"),
        **{"5xx_during_outage": ledger.server_errors(fault_at, back_at)},
    )
    assert result["acknowledged"] > 0
    assert (result["lost"], result["duplicated"], result["dead_lettered"]) == (0, 0, 0), status
    # The processor's own breaker wiring: its GET /breakers lists the one dependency it guards.
    assert result["breakers_after"] == {"database": "closed"}
    # The gateway does not depend on the processor: not one 5xx at any time.
    assert (result["5xx_before_fault"], result["5xx_during_outage"], result["5xx_after_recovery"]) == (
        0,
        0,
        0,
    )
