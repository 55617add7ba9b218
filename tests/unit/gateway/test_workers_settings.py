"""GATEWAY_WORKERS: what several gateway processes cannot share is refused at start-up."""

from __future__ import annotations

import pytest

from services.gateway.admission import request_cost
from services.gateway.settings import GatewaySettings

ISOLATED = {"GATEWAY_RUN_EVENT_PROCESSOR": False}


def test_one_worker_is_the_default_and_holds_the_whole_budget() -> None:
    settings = GatewaySettings()
    assert settings.workers == 1
    assert settings.ingest_budget_bytes_per_worker == settings.ingest_memory_budget_mb * 2**20


def test_workers_share_the_memory_budget() -> None:
    settings = GatewaySettings(GATEWAY_WORKERS=2, INGEST_MEMORY_BUDGET_MB=512, **ISOLATED)
    assert settings.ingest_budget_bytes_per_worker == 256 * 2**20
    assert request_cost(settings.max_request_bytes) <= settings.ingest_budget_bytes_per_worker


def test_a_worker_share_that_cannot_hold_one_request_is_refused() -> None:
    # 256 MiB hold one 4 MiB request (160 MiB); half of it does not.
    with pytest.raises(ValueError, match="shared by GATEWAY_WORKERS=2 cannot hold one request"):
        GatewaySettings(GATEWAY_WORKERS=2, INGEST_MEMORY_BUDGET_MB=256, **ISOLATED)


def test_workers_need_the_event_processor_in_its_own_process() -> None:
    with pytest.raises(ValueError, match="needs GATEWAY_RUN_EVENT_PROCESSOR=false"):
        GatewaySettings(GATEWAY_WORKERS=2, INGEST_MEMORY_BUDGET_MB=512)


@pytest.mark.parametrize("setting", ["INGEST_RATE_LIMIT", "INGEST_EVENTS_RATE_LIMIT"])
def test_per_process_rate_limits_are_refused_with_several_workers(setting: str) -> None:
    limits = {setting: "100/second"}
    with pytest.raises(ValueError, match="needs a shared RATE_LIMIT_STORAGE_URI"):
        GatewaySettings(GATEWAY_WORKERS=2, INGEST_MEMORY_BUDGET_MB=512, **ISOLATED, **limits)
    shared = GatewaySettings(
        GATEWAY_WORKERS=2,
        INGEST_MEMORY_BUDGET_MB=512,
        RATE_LIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",
        **ISOLATED,
        **limits,
    )
    assert shared.workers == 2


@pytest.mark.parametrize("bad", [0, -1, 33, "two"])
def test_a_worker_count_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="GATEWAY_WORKERS"):
        GatewaySettings(GATEWAY_WORKERS=bad, **ISOLATED)
