"""The analytics API in-process against a real PostgreSQL: caching headers, invalidation by
the database's notifications, stale-if-error, the tuning API and bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.analytics.app import create_app
from services.analytics.settings import AnalyticsSettings
from shared.event_store import store_events
from shared.events import AccessEvent
from tests.factories import event_dict
from tests.integration.analytics.planted import planted_events

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _store(dsn: str, events: list[dict[str, Any]]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await store_events(conn, [AccessEvent.model_validate(e) for e in events])
    finally:
        await conn.close()


@pytest.fixture
async def seeded(database_url: str) -> str:
    await _store(database_url, planted_events())
    return database_url


class Client(httpx.AsyncClient):
    app: FastAPI


async def _client(settings: AnalyticsSettings) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        listener = app.state.events_listener
        await asyncio.wait_for(listener.connected.wait(), timeout=10)
        async with Client(transport=httpx.ASGITransport(app=app), base_url="http://analytics") as http:
            http.app = app
            yield http


@pytest.fixture
async def client(seeded: str, tmp_path: Path) -> AsyncIterator[Client]:
    settings = AnalyticsSettings(
        database_url=seeded,
        cache_type="memory",
        admin_token=TOKEN,
        tracing_enabled=False,
        analytics_max_workers=1,
        cache_l3_path=tmp_path / "l3",
    )
    async for http in _client(settings):
        yield http


async def _wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_second_request_is_served_from_the_cache(client: Client) -> None:
    first = await client.get("/api/v1/analytics/patterns")
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "miss"
    second = await client.get("/api/v1/analytics/patterns")
    assert second.headers["x-cache"] == "hit"
    assert second.headers["x-cache-tier"] == "l1"
    assert second.json() == first.json()
    report = (await client.get("/api/v1/cache/report")).json()
    assert report["caches"]["patterns"]["computations"] == 1
    assert report["caches"]["patterns"]["ttl_seconds"] == 600
    assert report["tiers"]["l1"]["hits"] >= 1
    assert report["tiers"]["l3"]["entries"] >= 1
    assert set(report["tiers"]["l1"]) >= {"entries", "hits", "misses", "evictions", "promotions"}
    metrics = (await client.get("/metrics")).text
    assert 'cache_computations_total{cache="patterns"}' in metrics
    assert 'cache_hits_total{cache="patterns",tier="l1"}' in metrics


async def test_new_events_invalidate_only_the_analyses_they_change(client: Client, seeded: str) -> None:
    everything = (await client.get("/api/v1/analytics/summary")).json()
    annex = (await client.get("/api/v1/analytics/summary", params={"facility_id": "annex"})).json()
    assert (await client.get("/api/v1/analytics/summary", params={"facility_id": "annex"})).headers[
        "x-cache"
    ] == "hit"

    assert (await _store(seeded, [event_dict(facility_id="hq", door_id="door-1")])) == 1

    async def refreshed() -> bool:
        answer = await client.get("/api/v1/analytics/summary")
        return bool(answer.json()["total_events"] == everything["total_events"] + 1)

    await _wait_for(refreshed)
    untouched = await client.get("/api/v1/analytics/summary", params={"facility_id": "annex"})
    assert untouched.headers["x-cache"] == "hit"  # an hq event cannot change the annex analysis
    assert untouched.json() == annex


async def test_a_failed_recomputation_serves_the_last_value_marked_stale(client: Client, seeded: str) -> None:
    fresh = await client.get("/api/v1/analytics/patterns")
    assert fresh.status_code == 200
    assert (
        await client.put("/admin/tuning", json={"cache_ttl_seconds": {"patterns": 1}}, headers=AUTH)
    ).status_code == 200
    await client.get("/api/v1/analytics/patterns", params={"facility_id": "hq"})  # stored with the 1 s TTL
    await asyncio.sleep(1.2)

    async def break_table() -> None:
        conn = await asyncpg.connect(seeded)
        await conn.execute("ALTER TABLE access_events RENAME TO access_events_away")
        await conn.close()

    await break_table()
    stale = await client.get("/api/v1/analytics/patterns", params={"facility_id": "hq"})
    assert stale.status_code == 200
    assert stale.headers["x-cache"] == "stale"
    assert stale.headers["warning"] == '110 - "Response is Stale"'
    never_cached = await client.get("/api/v1/analytics/patterns", params={"facility_id": "nowhere"})
    assert never_cached.status_code == 503
    assert never_cached.headers["retry-after"]
    assert never_cached.json()["error"]["code"]


async def test_tuning_needs_the_admin_token_and_applies_live(client: Client) -> None:
    assert (await client.get("/admin/tuning")).status_code == 401
    assert (await client.get("/admin/tuning", headers={"Authorization": "Bearer wrong"})).status_code == 403
    # The token is checked before the body is parsed: bad JSON without it is 401, not 422.
    bad_json = {"content": b"{oops", "headers": {"content-type": "application/json"}}
    assert (await client.put("/admin/tuning", **bad_json)).status_code == 401  # type: ignore[arg-type]
    assert (await client.post("/api/v1/cache/invalidate", **bad_json)).status_code == 401  # type: ignore[arg-type]
    current = (await client.get("/admin/tuning", headers=AUTH)).json()
    assert current["max_workers"] == 1
    assert current["cache_ttl_seconds"]["patterns"] == 600
    changed = await client.put(
        "/admin/tuning",
        headers=AUTH,
        json={"chunk_size": 20_000, "max_workers": 2, "cache_ttl_seconds": {"summary": 5}},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["chunk_size"] == 20_000
    assert client.app.state.workers.max_workers == 2
    assert (await client.get("/admin/tuning", headers=AUTH)).json()["cache_ttl_seconds"]["summary"] == 5
    assert (await client.get("/api/v1/analytics/summary")).status_code == 200  # the resized pool works
    for bad in (
        {"chunk_size": 5},
        {"max_workers": 0},
        {"cache_ttl_seconds": {"nope": 5}},
        {"cache_ttl_seconds": {"patterns": 0}},
        {"unknown": 1},
    ):
        answer = await client.put("/admin/tuning", headers=AUTH, json=bad)
        assert answer.status_code == 422, bad
        assert answer.json()["error"]["code"] == "validation_error"


async def test_without_an_admin_token_every_admin_call_is_refused(seeded: str) -> None:
    settings = AnalyticsSettings(
        database_url=seeded, cache_type="memory", tracing_enabled=False, analytics_max_workers=1
    )
    async for http in _client(settings):
        assert (await http.get("/admin/tuning", headers=AUTH)).status_code == 403
        assert (await http.put("/admin/tuning", headers=AUTH, json={"chunk_size": 2000})).status_code == 403


async def test_bad_filters_are_clear_422s(client: Client) -> None:
    answer = await client.get("/api/v1/analytics/patterns", params={"start": "yesterday"})
    assert answer.status_code == 422
    assert "start" in answer.json()["error"]["message"]
    answer = await client.get(
        "/api/v1/analytics/summary", params={"start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}
    )
    assert answer.status_code == 422
    assert (
        await client.get("/api/v1/analytics/anomalies", params={"burst_min_denials": 1})
    ).status_code == 422


HOSTILE_FILTERS: list[dict[str, str]] = [
    {"start": "9999-12-31T23:59:59-05:00"},  # overflows when converted to UTC
    {"end": "0000-01-01T00:00:00Z"},
    {"start": "1" * 40},
    {"start": "-" + "9" * 30},
    {"end": "2025-01-01T00:00:00+99:00"},
    {"start": "NaN"},
    {"start": "2025-01-01\x00"},
    {"start": "x" * 5000},
    {"facility_id": "f\x00"},
    {"facility_id": "f" * 201},
    {"start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
]


@pytest.mark.parametrize("path", ["/api/v1/analytics/summary", "/api/v1/analytics/patterns"])
async def test_hostile_filters_are_422_with_the_envelope_never_500(client: Client, path: str) -> None:
    for params in HOSTILE_FILTERS:
        answer = await client.get(path, params=params)
        assert answer.status_code == 422, (params, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "validation_error"
        assert error["message"]
    # The extremes of the representable range are valid bounds of a query.
    for params in ({"end": "9999-12-31T23:59:59.999999+00:00"}, {"start": "0001-01-01T00:00:00Z"}):
        assert (await client.get(path, params=params)).status_code == 200, params


async def test_anomalies_endpoint_lists_the_planted_findings(client: Client) -> None:
    body = (await client.get("/api/v1/analytics/anomalies")).json()
    assert body["counts"] == {
        "denial_burst": 1,
        "unusual_hour": 1,
        "invalid_badge_granted": 1,
        "door_held_open": 1,
        "entry_without_badge": 1,
    }
    assert all(a["evidence"] for a in body["anomalies"])


async def test_the_anomaly_analysis_is_bounded_by_a_date_window(client: Client) -> None:
    too_long = await client.get(
        "/api/v1/analytics/anomalies", params={"start": "2024-01-01T00:00:00Z", "end": "2025-06-01T00:00:00Z"}
    )
    assert too_long.status_code == 422
    assert too_long.json()["error"]["code"] == "window_too_large"
    assert too_long.json()["error"]["details"] == {"max_days": 92}
    # Only a start, long before the newest event: the same refusal.
    open_ended = await client.get("/api/v1/analytics/anomalies", params={"start": "2020-01-01T00:00:00Z"})
    assert open_ended.status_code == 422
    # No dates: the default window, ending just past the newest event.
    body = (await client.get("/api/v1/analytics/anomalies")).json()
    start = datetime.fromisoformat(body["filters"]["start"])
    end = datetime.fromisoformat(body["filters"]["end"])
    assert end - start == timedelta(days=31)
    assert datetime(2025, 3, 1, tzinfo=UTC) < end < datetime(2025, 4, 30, tzinfo=UTC)
