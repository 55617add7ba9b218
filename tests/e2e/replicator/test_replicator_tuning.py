"""The replicator's `/admin/tuning` on a real process: auth, bounds, and a live interval change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.replicator.test_replicator_process import _bulk_insert, replicator_env, status, wait_for
from tools.dev.fleet import ServiceProcess

pytestmark = pytest.mark.e2e

TOKEN = "replicator-tuning-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_tuning_is_guarded_validated_and_applied_live(
    database_url: str, replica_url: str, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(
        "services.replicator", replicator_env(database_url, replica_url, ADMIN_TOKEN=TOKEN), wait_ready=True
    )
    tuning = service.url + "/admin/tuning"
    assert httpx.get(tuning, timeout=5).status_code == 401
    assert httpx.get(tuning, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 403
    assert httpx.put(tuning, json={"interval_seconds": 5}, timeout=5).status_code == 401

    current = httpx.get(tuning, headers=AUTH, timeout=5).json()
    assert current["interval_seconds"] == 0.2
    assert current["defaults"] == {"batch_size": 50_000, "interval_seconds": 0.2}
    assert current["bounds"]["interval_seconds"] == {"min": 0.05, "max": 3600.0}
    for bad in ({"interval_seconds": 0}, {"interval_seconds": 7200}, {"batch_size": 10}, {}, {"x": 1}):
        answer = httpx.put(tuning, json=bad, headers=AUTH, timeout=5)
        assert answer.status_code == 422, (bad, answer.text)

    # A long interval: new rows wait, but the backlog gauge keeps telling how old they are.
    answer = httpx.put(tuning, json={"interval_seconds": 3600}, headers=AUTH, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["interval_seconds"] == 3600
    time.sleep(0.5)  # the loop, woken by the change, settles into its long wait
    replicated = status(service)["rows_replicated"]
    asyncio.run(_bulk_insert(database_url, "deferred", 1000))
    wait_for(lambda: (status(service)["backlog_seconds"] or 0) > 0, 5, "the backlog gauge to see the rows")
    assert status(service)["rows_replicated"] == replicated
    metrics = httpx.get(service.url + "/metrics", timeout=5).text
    assert 'replication_setting{setting="interval_seconds"} 3600.0' in metrics

    # Back to a short interval: the waiting loop wakes at once instead of sleeping an hour.
    changed = time.monotonic()
    answer = httpx.put(tuning, json={"interval_seconds": 0.2, "batch_size": 300}, headers=AUTH, timeout=5)
    assert answer.status_code == 200
    wait_for(lambda: status(service)["rows_replicated"] == (replicated or 0) + 1000, 5, "the deferred rows")
    assert time.monotonic() - changed < 5
    assert status(service)["batch_size"] == 300
    wait_for(lambda: status(service)["backlog_seconds"] == 0, 5, "the backlog to return to 0")


def test_a_longer_interval_ends_a_running_catch_up(
    database_url: str, replica_url: str, start_service: Callable[..., ServiceProcess]
) -> None:
    """Deferring replication during a burst must take effect mid-catch-up: while writes keep
    batches full, a catch-up would otherwise never end."""
    service = start_service(
        "services.replicator",
        replicator_env(database_url, replica_url, ADMIN_TOKEN=TOKEN, REPLICATION_BATCH_SIZE="500"),
        wait_ready=True,
    )
    total = 200_000  # the bulk insert formula stays within int4 up to ~270,000 rows
    asyncio.run(_bulk_insert(database_url, "burst", total))
    wait_for(lambda: (status(service)["rows_replicated"] or 0) > 0, 10, "the catch-up to start")
    answer = httpx.put(
        service.url + "/admin/tuning", json={"interval_seconds": 3600}, headers=AUTH, timeout=5
    )
    assert answer.status_code == 200
    time.sleep(1.5)  # the batch in flight ends
    stopped_at = status(service)["rows_replicated"]
    time.sleep(1.5)
    assert status(service)["rows_replicated"] == stopped_at
    assert isinstance(stopped_at, int)
    assert stopped_at < total
    assert (status(service)["backlog_seconds"] or 0) > 0  # still reported while deferred
    httpx.put(service.url + "/admin/tuning", json={"interval_seconds": 0.2}, headers=AUTH, timeout=5)
    wait_for(lambda: status(service)["rows_replicated"] == total, 60, "the rest after the deferral")
