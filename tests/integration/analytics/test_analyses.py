"""The analyses on a dataset with planted patterns: exactly those are found, and every aggregate
matches an independent computation over the generated events."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest

from services.analytics import patterns
from services.analytics.analyses import AnalyticsService
from services.analytics.anomalies import AnomalyParameters
from services.analytics.filters import EventFilter
from services.analytics.worker_pool import WorkerPool
from shared.breaker import CircuitBreaker
from shared.cache import MemoryCacheManager
from shared.event_store import store_events
from shared.events import AccessEvent, parse_timestamp
from tests.integration.analytics.planted import PLANTED, POWER_USER, planted_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return planted_events()


@pytest.fixture
async def service(database_url: str, events: list[dict[str, Any]]) -> AsyncIterator[AnalyticsService]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    await store_events(pool, [AccessEvent.model_validate(e) for e in events])
    workers = WorkerPool(1)
    await workers.start()
    try:
        yield AnalyticsService(pool, workers, MemoryCacheManager(), CircuitBreaker("database"))
    finally:
        workers.close()
        await pool.close()


def _expected(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The analysis numbers computed directly from the generated events with plain Python."""
    times = [parse_timestamp(e["timestamp"]) for e in events]
    per_user = Counter(e["person_id"] for e in events)
    per_door = Counter(e["door_id"] for e in events)
    pairs = Counter((e["person_id"], e["door_id"]) for e in events)
    by_result = Counter(e["access_result"] for e in events)
    p80 = float(np.percentile(list(per_user.values()), 80))
    p20 = float(np.percentile(list(per_user.values()), 20))
    outside = sum(1 for t in times if t.weekday() >= 5 or not 8 <= t.hour < 18)
    return {
        "total": len(events),
        "users": per_user,
        "doors": per_door,
        "pairs": pairs,
        "by_result": by_result,
        "by_badge": Counter(e.get("badge_status") or "Unknown" for e in events),
        "by_hour": Counter(t.hour for t in times),
        "by_weekday": Counter(t.strftime("%A") for t in times),
        "power": {p for p, n in per_user.items() if n > p80},
        "occasional": {p for p, n in per_user.items() if n < p20},
        "outside": outside,
        "first": min(times),
        "last": max(times),
        "denied_doors": Counter(e["door_id"] for e in events if e["access_result"] == "Denied"),
    }


async def test_patterns_match_an_independent_computation(
    service: AnalyticsService, events: list[dict[str, Any]]
) -> None:
    doc = await service.get_unique_patterns_analysis(EventFilter())
    want = _expected(events)
    summary = doc["data_summary"]
    assert summary["total_records"] == want["total"]
    assert summary["unique_users"] == len(want["users"])
    assert summary["unique_doors"] == len(want["doors"])
    assert summary["unique_pairs"] == len(want["pairs"])
    assert datetime.fromisoformat(summary["date_range"]["start"]) == want["first"]
    assert datetime.fromisoformat(summary["date_range"]["end"]) == want["last"]

    users = doc["user_patterns"]
    assert users["power_users"]["count"] == len(want["power"])
    assert users["power_users"]["top"][0] == {"person_id": POWER_USER, "events": 500}
    top_power = {u["person_id"] for u in users["power_users"]["top"]}
    assert top_power <= want["power"]
    assert users["occasional_users"]["count"] == len(want["occasional"])
    assert {u["person_id"] for u in users["occasional_users"]["top"]} <= want["occasional"]
    assert (
        users["power_users"]["count"] + users["regular_users"]["count"] + users["occasional_users"]["count"]
    ) == len(want["users"])

    temporal = doc["temporal_patterns"]
    assert temporal["by_hour"] == {str(h): want["by_hour"].get(h, 0) for h in range(24)}
    assert temporal["by_weekday"] == {d: want["by_weekday"].get(d, 0) for d in patterns.WEEKDAYS}
    assert temporal["peak_hour"] == max(range(24), key=lambda h: (want["by_hour"].get(h, 0), -h))
    assert temporal["outside_working_hours"]["events"] == want["outside"]

    access = doc["access_patterns"]
    assert access["by_result"] == dict(sorted(want["by_result"].items()))
    assert access["by_badge_status"] == dict(sorted(want["by_badge"].items()))
    assert access["success_rate"] == round(want["by_result"]["Granted"] / want["total"], 6)
    assert access["granted_with_expired_or_suspended_badge"] == 1

    top_pair = doc["interaction_patterns"]["top_pairs"][0]
    best = max(want["pairs"].items(), key=lambda kv: (kv[1], tuple(-ord(c) for c in kv[0][0])))
    assert top_pair["events"] == best[1]
    assert doc["interaction_patterns"]["unique_pairs"] == len(want["pairs"])

    devices = doc["device_patterns"]
    never = sorted(d for d in want["doors"] if want["denied_doors"][d] == 0)
    assert devices["never_denied"]["doors"] == never
    worst = devices["highest_denial_rates"][0]
    rates = {d: want["denied_doors"][d] / want["doors"][d] for d in want["doors"]}
    assert worst["denial_rate"] == round(max(rates.values()), 6)
    rules = {r["rule"] for r in doc["recommendations"]}
    assert "invalid_badge_granted" in rules
    assert all(r["reason"] and r["evidence"] for r in doc["recommendations"])


async def test_sql_and_pandas_aggregation_agree(
    service: AnalyticsService, events: list[dict[str, Any]]
) -> None:
    rows = await service.pool.fetch(
        "SELECT time, person_id, door_id, access_result, badge_status FROM access_events"
    )
    frame = pd.DataFrame([dict(r) for r in rows])
    from_sql = patterns.build_patterns(await patterns.fetch_aggregates(service.pool, EventFilter()))
    from_frame = patterns.build_patterns(patterns.aggregates_from_frame(frame))
    assert from_sql == from_frame


async def test_filters_restrict_the_analysis(service: AnalyticsService, events: list[dict[str, Any]]) -> None:
    flt = EventFilter(
        start=parse_timestamp("2025-03-10T00:00:00Z"),
        end=parse_timestamp("2025-03-17T00:00:00Z"),
        facility_id="annex",
    )
    doc = await service.get_unique_patterns_analysis(flt)
    inside = [
        e
        for e in events
        if flt.start <= parse_timestamp(e["timestamp"]) < flt.end  # type: ignore[operator]
        and e["facility_id"] == "annex"
    ]
    assert doc["data_summary"]["total_records"] == len(inside) > 0
    assert doc["data_summary"]["unique_doors"] == len({e["door_id"] for e in inside})
    summary = await service.get_summary(flt)
    assert summary["total_events"] == len(inside)
    assert summary["denied"] == sum(e["access_result"] == "Denied" for e in inside)


async def test_exactly_the_planted_anomalies_are_found(service: AnalyticsService) -> None:
    report = await service.get_anomalies(EventFilter(), AnomalyParameters())
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in report["anomalies"]:
        found.setdefault(finding["type"], []).append(finding)
    assert set(found) == set(PLANTED)
    assert report["counts"] == {kind: 1 for kind in PLANTED}

    burst = found["denial_burst"][0]
    assert burst["person_id"] == PLANTED["denial_burst"]["person_id"]
    assert [e["event_id"] for e in burst["evidence"]["events"]] == PLANTED["denial_burst"]["event_ids"]
    assert burst["evidence"]["span_seconds"] == 36.0

    odd = found["unusual_hour"][0]
    assert odd["person_id"] == PLANTED["unusual_hour"]["person_id"]
    assert odd["evidence"]["event_id"] == "odd-hour-0"
    assert odd["evidence"]["hour"] == 3
    assert odd["evidence"]["nearby_events"] == 0
    assert all(9 <= h < 17 for h in odd["evidence"]["usual_hours"])

    for kind in ("invalid_badge_granted", "door_held_open", "entry_without_badge"):
        (finding,) = found[kind]
        assert finding["evidence"]["event_id"] in PLANTED[kind]["event_ids"]
    assert found["door_held_open"][0]["door_id"] == PLANTED["door_held_open"]["door_id"]
    assert found["door_held_open"][0]["evidence"]["door_held_open_time"] == 120.0


async def test_anomaly_thresholds_are_parameters(service: AnalyticsService) -> None:
    strict = await service.get_anomalies(
        EventFilter(), AnomalyParameters(burst_min_denials=5, held_open_threshold_s=200)
    )
    assert strict["counts"]["denial_burst"] == 0
    assert strict["counts"]["door_held_open"] == 0
    wide = await service.get_anomalies(EventFilter(), AnomalyParameters(burst_window_s=30, limit=1))
    # 4 denials 12 s apart: within 30 s only 3 fit, still one burst covering all four.
    assert wide["counts"]["denial_burst"] == 1
    assert len(wide["anomalies"][0]["evidence"]) > 0
