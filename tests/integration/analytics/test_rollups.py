"""The rollups give the same answers as the raw rows: summary, patterns and anomalies, on
planted and on random data, with ranges that start and end inside buckets, rows
not rolled up yet, redelivered events and uploads."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.analytics import anomalies, patterns, rollups
from services.analytics.anomalies import AnomalyParameters, AnomalyWindow
from services.analytics.filters import EventFilter
from services.analytics.responses import AnomalyReport
from services.analytics.rollup_refresher import RollupRefresher
from services.analytics.summary import access_summary
from shared.db import apply_migrations, migration_files
from shared.event_store import copy_event_records, store_events
from shared.events import AccessEvent, event_record
from tests.integration.analytics.planted import planted_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

_UTC = UTC


# Wide enough for every filter below: the service's 92-day limit is not what is tested here.
_ANOMALY_WINDOW = AnomalyWindow(maximum=timedelta(days=400))
_NO_EVENT_END = datetime(2025, 6, 1, tzinfo=_UTC)
# The defaults (the held-open query answered by its partial index), and parameters that find
# more on small data: bursts over days, short histories, a threshold below the index's bound.
ANOMALY_PARAMETERS = [
    AnomalyParameters(),
    AnomalyParameters(
        burst_min_denials=2,
        burst_window_s=3 * 86400,
        history_min_events=5,
        unusual_hour_max_share=0.2,
        held_open_threshold_s=5.0,
        limit=3,
    ),
]


async def _anomalies(
    pool: asyncpg.Pool, flt: EventFilter, params: AnomalyParameters, *, use_rollups: bool
) -> dict[str, Any]:
    newest = await anomalies.newest_event(pool, flt) if flt.end is None else None
    # Without a matching event the window would end now, which differs between two calls.
    bounded = anomalies.bounded_filter(flt, newest or _NO_EVENT_END, _ANOMALY_WINDOW)
    inputs = await anomalies.fetch_inputs(pool, bounded, params, use_rollups=use_rollups)
    detected = anomalies.detect_in_frames(inputs["denials"], inputs["profile"], params)
    unusual = await anomalies.fetch_unusual_events(pool, bounded, detected["cells"])
    answer = anomalies.assemble(inputs, detected, unusual, params, bounded)
    return {
        "answer": answer,
        "json": AnomalyReport.model_validate(answer).model_dump_json(),  # what the service sends
        "profile": sorted(map(tuple, inputs["profile"].itertuples(index=False))),
    }


async def _answers(pool: asyncpg.Pool, flt: EventFilter, *, use_rollups: bool) -> dict[str, Any]:
    summary = await access_summary(pool, flt, top=1000, use_rollups=use_rollups)
    aggregates = await patterns.fetch_aggregates(pool, flt, use_rollups=use_rollups)
    return {
        "summary": summary,
        "patterns": patterns.build_patterns(aggregates),
        "hour_weekday": sorted(map(tuple, aggregates.hour_weekday.itertuples(index=False))),
        "pairs": sorted(map(tuple, aggregates.pairs.itertuples(index=False))),
        "anomalies": [
            await _anomalies(pool, flt, params, use_rollups=use_rollups) for params in ANOMALY_PARAMETERS
        ],
    }


async def _assert_same(pool: asyncpg.Pool, filters: Sequence[EventFilter]) -> None:
    for flt in filters:
        from_rollups = await _answers(pool, flt, use_rollups=True)
        from_raw = await _answers(pool, flt, use_rollups=False)
        assert from_rollups == from_raw, flt


async def _rolled_up(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT rows_total FROM access_rollup_state"))


async def _refresh_until(pool: asyncpg.Pool, rows_total: int, max_rows: int = 50_000) -> None:
    """Refresh until `rows_total` rows are rolled up. A refresh only takes rows of transactions
    below the oldest one still running anywhere on the server, so on a shared server it may
    have to wait for someone else's transaction to end."""
    deadline = asyncio.get_running_loop().time() + 60
    while await _rolled_up(pool) < rows_total:
        if await rollups.refresh(pool, max_rows=min(max_rows, rows_total - await _rolled_up(pool))) == 0:
            assert asyncio.get_running_loop().time() < deadline, "rollup refresh made no progress for 60 s"
            await asyncio.sleep(0.2)


_HOURS_TOTAL = " + ".join(rollups.HOURS_OF_DAY)


async def _build_all(pool: asyncpg.Pool) -> int:
    """Rebuild every stale coarse bucket that has ended; returns how many."""
    built = 0
    while done := await rollups.compact(pool, settled_s=0, max_buckets=3):
        built += done
    return built


async def _stale(pool: asyncpg.Pool) -> set[tuple[str, datetime]]:
    return {
        (r["rollup"], r["bucket"]) for r in await pool.fetch("SELECT rollup, bucket FROM access_rollup_stale")
    }


async def _rollup_total(pool: asyncpg.Pool) -> int:
    """Events counted by the rollups, checked the same in every table that holds them all once
    the coarse buckets are rebuilt."""
    await _build_all(pool)
    assert await _stale(pool) == set()
    total = int(await pool.fetchval("SELECT coalesce(sum(n), 0) FROM access_rollup_time_month"))
    for level in rollups.PEOPLE.levels:
        assert (
            int(await pool.fetchval(f"SELECT coalesce(sum(n), 0) FROM {rollups.PEOPLE.table(level)}"))
            == total
        )
    for level in rollups.HOURS.levels:
        table = rollups.HOURS.table(level)
        assert int(await pool.fetchval(f"SELECT coalesce(sum({_HOURS_TOTAL}), 0) FROM {table}")) == total
    return total


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


PLANTED_FILTERS = [
    EventFilter(),
    EventFilter(facility_id="hq"),
    EventFilter(start=datetime(2025, 3, 5, 10, 17, 3, tzinfo=_UTC)),
    EventFilter(end=datetime(2025, 3, 19, 23, 59, 59, 999000, tzinfo=_UTC)),
    EventFilter(
        start=datetime(2025, 3, 4, 9, 30, tzinfo=_UTC), end=datetime(2025, 3, 25, 16, 5, tzinfo=_UTC)
    ),
    EventFilter(
        start=datetime(2025, 3, 6, tzinfo=_UTC), end=datetime(2025, 3, 13, tzinfo=_UTC), facility_id="annex"
    ),
    EventFilter(start=datetime(2025, 3, 6, 11, tzinfo=_UTC), end=datetime(2025, 3, 6, 15, 30, tzinfo=_UTC)),
    EventFilter(start=datetime(2025, 2, 1, tzinfo=_UTC), end=datetime(2025, 5, 1, tzinfo=_UTC)),
    EventFilter(start=datetime(2025, 3, 10, tzinfo=_UTC), end=datetime(2025, 3, 10, tzinfo=_UTC)),
    EventFilter(facility_id="nowhere"),
]


async def test_planted_data_partly_rolled_up_redelivered_and_uploaded(pool: asyncpg.Pool) -> None:
    events = [AccessEvent.model_validate(e) for e in planted_events()]
    first, second, third = events[:900], events[900:1400], events[1400:]
    assert await store_events(pool, first) == len(first)
    await _refresh_until(pool, len(first), max_rows=250)
    assert await _rolled_up(pool) == len(first)
    # Redelivered: nothing new is stored, so nothing is counted again.
    assert await store_events(pool, first[:300]) == 0
    async with pool.acquire() as conn:  # an upload: COPY, staging, INSERT ... ON CONFLICT
        assert await copy_event_records(conn, [event_record(e) for e in first[:50] + second]) == len(second)
    await _refresh_until(pool, len(first) + 123, max_rows=123)  # the rest stays raw
    await store_events(pool, third)
    await _assert_same(pool, PLANTED_FILTERS)

    await _refresh_until(pool, len(events))
    assert await _rolled_up(pool) == len(events)
    assert await _rollup_total(pool) == len(events)
    await _assert_same(pool, PLANTED_FILTERS)

    raw = await _answers(pool, EventFilter(), use_rollups=False)
    assert raw["summary"]["total_events"] == len(events)


async def test_a_month_or_week_is_built_from_its_days_once_it_has_ended_and_settled(
    pool: asyncpg.Pool,
) -> None:
    events = [AccessEvent.model_validate(e) for e in planted_events()]
    first, late = events[:1000], events[1000:]
    await store_events(pool, first)
    await _refresh_until(pool, len(first))
    marked = await _stale(pool)
    assert ("people", datetime(2025, 3, 1, tzinfo=_UTC)) in marked
    assert ("hours", datetime(2025, 3, 3, tzinfo=_UTC)) in marked  # a Monday
    assert await pool.fetchval("SELECT count(*) FROM access_rollup_people_month") == 0
    await _assert_same(pool, PLANTED_FILTERS)  # the stale months and weeks are read from their days

    assert await rollups.compact(pool, settled_s=3600) == 0  # touched a moment ago: not settled
    assert await rollups.compact(pool, settled_s=0, max_buckets=1) == 1
    assert len(await _stale(pool)) == len(marked) - 1
    await _assert_same(pool, PLANTED_FILTERS)  # some built, some not
    await _build_all(pool)
    assert await _stale(pool) == set()
    await _assert_same(pool, PLANTED_FILTERS)

    # Late events of months already built mark them again, until they are built again.
    await store_events(pool, late)
    await _refresh_until(pool, len(events))
    assert await _stale(pool)
    await _assert_same(pool, PLANTED_FILTERS)
    assert await _rollup_total(pool) == len(events)
    await _assert_same(pool, PLANTED_FILTERS)

    # The month and week under way have not ended: they stay marked, read from their days.
    now = datetime.now(_UTC)
    current = AccessEvent.model_validate(
        {**planted_events()[0], "event_id": "now", "timestamp": now.isoformat()}
    )
    await store_events(pool, [current])
    await _refresh_until(pool, len(events) + 1)
    assert await rollups.compact(pool, settled_s=0) == 0
    assert ("people", rollups.floor_to(now, "month")) in await _stale(pool)
    await _assert_same(pool, [EventFilter(), EventFilter(start=now - timedelta(days=40))])


async def test_a_refresh_in_progress_elsewhere_is_not_waited_for(pool: asyncpg.Pool) -> None:
    await store_events(pool, [AccessEvent.model_validate(e) for e in planted_events()[:10]])
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM access_rollup_state FOR UPDATE")
        assert await asyncio.wait_for(rollups.refresh(pool), timeout=10) == 0
        assert await asyncio.wait_for(rollups.compact(pool, settled_s=0), timeout=10) == 0
    await _refresh_until(pool, 10)


async def test_the_service_refresher_rolls_up_what_is_stored(pool: asyncpg.Pool) -> None:
    events = [AccessEvent.model_validate(e) for e in planted_events()[:500]]
    refresher = RollupRefresher(pool, interval_s=0.1, batch_rows=200, settle_s=0)
    refresher.start()
    try:
        await store_events(pool, events[:250])
        await store_events(pool, events[250:])
        for _ in range(600):  # up to 60 s
            if await _rolled_up(pool) >= len(events) and not await _stale(pool):
                break
            await asyncio.sleep(0.1)
    finally:
        await refresher.stop()
    assert await _rolled_up(pool) == len(events)
    assert await _stale(pool) == set()  # the refresher built the months and weeks once caught up
    assert refresher.buckets_built >= 2
    assert await _rollup_total(pool) == len(events)
    assert refresher.rows_total == len(events)
    await _assert_same(pool, PLANTED_FILTERS[:3])


async def test_an_upload_writing_holds_the_refresher_back_until_it_ends(pool: asyncpg.Pool) -> None:
    await store_events(pool, [AccessEvent.model_validate(e) for e in planted_events()[:20]])
    refresher = RollupRefresher(pool, batch_rows=200)
    async with pool.acquire() as writer:
        async with rollups.holding_refresh_back(writer):
            assert await rollups.upload_writing(writer)
            assert await refresher.refresh_once() == 0
            assert refresher.held_back == 1
            assert await _rolled_up(pool) == 0
        assert not await rollups.upload_writing(writer)
    deadline = asyncio.get_running_loop().time() + 60
    while await _rolled_up(pool) < 20:
        if await refresher.refresh_once() == 0:  # someone else's transaction still running
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
    assert refresher.held_back == 1


async def test_the_backlog_gauge_grows_while_held_back_and_is_zero_once_rolled_up(pool: asyncpg.Pool) -> None:
    events = [AccessEvent.model_validate(e) for e in planted_events()[:50]]
    assert await rollups.backlog_seconds(pool) == 0.0  # nothing stored: nothing behind
    refresher = RollupRefresher(pool, interval_s=0.1, batch_rows=200)
    try:
        async with pool.acquire() as writer, rollups.holding_refresh_back(writer):
            refresher.start()
            await store_events(pool, events)
            await asyncio.sleep(0.6)
            assert await rollups.backlog_seconds(pool) >= 0.6
            # The refresher, held back, still says how far behind it is.
            gauge = REGISTRY.get_sample_value("rollup_backlog_seconds")
            assert gauge is not None
            assert gauge >= 0.3, gauge
            assert await _rolled_up(pool) == 0
        for _ in range(600):  # up to 60 s
            if REGISTRY.get_sample_value("rollup_backlog_seconds") == 0.0 and await _rolled_up(pool) == 50:
                break
            await asyncio.sleep(0.1)
    finally:
        await refresher.stop()
    assert await _rolled_up(pool) == len(events)
    assert REGISTRY.get_sample_value("rollup_backlog_seconds") == 0.0
    assert await rollups.backlog_seconds(pool) == 0.0
    assert refresher.held_back >= 1


async def _until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


class _Burst:
    """A writer storing batches of new events back to back until stopped: ingestion far above
    the thresholds the tests give the refresher."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.stored = pool, 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._write())

    async def _write(self) -> None:
        batch = 0
        while not self._stop.is_set():
            events = _random_events(10_000 + batch, 200)
            batch += 1
            await store_events(self.pool, events)
            self.stored += len(events)

    async def until_stored(self, rows: int) -> None:
        async def stored() -> bool:
            return self.stored >= rows

        await _until(stored, f"{rows} rows stored")

    @property
    def writing(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def test_the_refresher_defers_to_a_burst_of_ingestion_and_rolls_it_up_after(pool: asyncpg.Pool) -> None:
    deferred_before = REGISTRY.get_sample_value("rollup_refreshes_deferred_total") or 0.0
    burst = _Burst(pool)
    refresher = RollupRefresher(pool, interval_s=0.2, busy_rows_per_s=50, max_defer_s=600)
    try:
        await burst.until_stored(400)
        refresher.start()

        async def deferred_three_turns() -> bool:
            return refresher.deferred >= 3

        await _until(deferred_three_turns, "three turns deferred to the burst")
        await burst.stop()

        async def all_rolled_up() -> bool:
            return await _rolled_up(pool) == burst.stored

        await _until(all_rolled_up, "the burst rolled up once it ended")
    finally:
        await burst.stop()
        await refresher.stop()
    assert await _rollup_total(pool) == burst.stored
    deferred_after = REGISTRY.get_sample_value("rollup_refreshes_deferred_total") or 0.0
    assert deferred_after - deferred_before == refresher.deferred
    await _assert_same(pool, [EventFilter(), EventFilter(facility_id="hq")])


async def test_catching_up_in_full_batches_looks_at_the_writers_pace_once(pool: asyncpg.Pool) -> None:
    """While it catches up, the writers' pace during the last full batch is the next turn's look:
    no wait of `probe_s` per batch."""
    events = _random_events(77, 40_000)
    for i in range(0, len(events), 5_000):
        await store_events(pool, events[i : i + 5_000])
    refresher = RollupRefresher(pool, interval_s=1.0, batch_rows=4_000)
    refresher.probe_s = 0.01  # every batch of 4,000 rows takes longer than that

    async def all_rolled_up() -> bool:
        return await _rolled_up(pool) >= len(events)

    refresher.start()
    try:
        await _until(all_rolled_up, "all rolled up")
    finally:
        await refresher.stop()
    assert refresher.rows_total == len(events)
    assert refresher.deferred == 0
    assert refresher.looks <= 2, refresher.looks  # 10 batches: one look before the first


@pytest.mark.parametrize("max_defer_s", [0.5, 0.0], ids=["waited-longer-than-max-defer", "never-defers"])
async def test_rows_are_rolled_up_during_the_burst_past_max_defer_or_without_deferring(
    pool: asyncpg.Pool, max_defer_s: float
) -> None:
    burst = _Burst(pool)
    refresher = RollupRefresher(pool, interval_s=0.2, busy_rows_per_s=50, max_defer_s=max_defer_s)
    try:
        await burst.until_stored(400)
        refresher.start()

        async def some_rolled_up() -> bool:
            return await _rolled_up(pool) > 0

        await _until(some_rolled_up, f"rows rolled up during the burst (max_defer_s {max_defer_s})")
        assert burst.writing  # still writing: the refresher did not wait for its end
        if max_defer_s == 0:
            assert refresher.deferred == 0
    finally:
        await burst.stop()
        await refresher.stop()


async def test_an_upload_writing_during_a_burst_holds_the_refresher_back_rather_than_defers_it(
    pool: asyncpg.Pool,
) -> None:
    burst = _Burst(pool)
    refresher = RollupRefresher(pool, interval_s=0.2, busy_rows_per_s=50, max_defer_s=600)
    try:
        async with pool.acquire() as writer, rollups.holding_refresh_back(writer):
            await burst.until_stored(400)
            refresher.start()

            async def held_back_twice() -> bool:
                return refresher.held_back >= 2

            await _until(held_back_twice, "two turns held back by the upload")
            assert refresher.deferred == 0
            assert await _rolled_up(pool) == 0
    finally:
        await burst.stop()
        await refresher.stop()


async def test_a_hold_left_on_a_pooled_connection_ends_when_it_goes_back(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as writer:
        await writer.execute("SELECT pg_advisory_lock_shared($1, $2)", *rollups.UPLOAD_LOCK_KEYS)
        assert await rollups.upload_writing(writer)
    async with pool.acquire() as other:
        assert not await rollups.upload_writing(other)


async def test_a_hold_in_another_database_does_not_hold_this_one_back(
    pool: asyncpg.Pool, replica_url: str
) -> None:
    elsewhere = await asyncpg.connect(replica_url)
    try:
        async with rollups.holding_refresh_back(elsewhere), pool.acquire() as conn:
            assert not await rollups.upload_writing(conn)
    finally:
        await elsewhere.close()


# Random data: three months across a year boundary, facilities and badge statuses sometimes
# absent, a few people and doors so groups repeat.
_START = datetime(2024, 12, 20, tzinfo=_UTC)
_SPAN_S = 80 * 86400


def _random_events(seed: int, count: int) -> list[AccessEvent]:
    rng = random.Random(seed)
    events = []
    for i in range(count):
        when = _START + timedelta(seconds=rng.randrange(_SPAN_S), milliseconds=rng.randrange(1000))
        events.append(
            AccessEvent.model_validate(
                {
                    "event_id": f"r{seed}-{i}",
                    "timestamp": when.isoformat(),
                    "person_id": f"p{rng.randrange(7)}",
                    "door_id": f"d{rng.randrange(5)}",
                    "access_result": rng.choice(["Granted", "Granted", "Denied", "Timeout", "Error"]),
                    "badge_status": rng.choice([None, "Valid", "Valid", "Expired", "Suspended", "Invalid"]),
                    "facility_id": rng.choice([None, "hq", "annex"]),
                    "door_held_open_time": rng.choice([0.0, 2.0, rng.uniform(0, 60)]),
                    "entry_without_badge": rng.random() < 0.05,
                }
            )
        )
    return events


_instants = st.integers(min_value=-3 * 86400, max_value=_SPAN_S + 3 * 86400).map(
    lambda s: _START + timedelta(seconds=s)
)
_filters = st.builds(
    lambda a, b, f: EventFilter(
        start=min(a, b) if a and b else a, end=max(a, b) if a and b else b, facility_id=f
    ),
    st.one_of(st.none(), _instants),
    st.one_of(st.none(), _instants),
    st.sampled_from([None, "hq", "annex"]),
)


async def _reset(conn: asyncpg.Connection) -> None:
    # DELETE, not TRUNCATE: a few hundred rows, and no new files to create and sync per example.
    for table in (
        "access_events",
        *(
            f"access_rollup_{name}_{level}"
            for name in ("time", "people", "hours")
            for level in ("month", "week", "day", "hour")
        ),
    ):
        if await conn.fetchval("SELECT to_regclass($1)", table) is not None:
            await conn.execute(f"DELETE FROM {table}")
    await conn.execute("DELETE FROM access_rollup_stale")
    await conn.execute("UPDATE access_rollup_state SET last_xid = '0', last_seq = 0, rows_total = 0")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(0, 300),
    batch=st.integers(1, 120),
    refresh_rows=st.integers(1, 200),
    filters=st.lists(_filters, min_size=1, max_size=4),
)
def test_random_data_and_ranges(
    database_url: str, seed: int, count: int, batch: int, refresh_rows: int, filters: list[EventFilter]
) -> None:
    async def run() -> None:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await _reset(conn)
            events = _random_events(seed, count)
            builds = random.Random(seed)
            for i in range(0, len(events), batch):
                await store_events(pool, events[i : i + batch])
                await rollups.refresh(pool, max_rows=refresh_rows)
                if builds.random() < 0.5:  # some months and weeks built, some stale
                    await rollups.compact(pool, settled_s=0, max_buckets=builds.randrange(1, 4))
                await store_events(pool, events[: i // 2])  # redeliveries
            await _assert_same(pool, filters)
        finally:
            await pool.close()

    asyncio.run(run())


def test_rows_rolled_up_before_the_hour_rollups_existed_are_counted_once(
    make_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0007 fills the hour rollups with what the refresh of 0006 had rolled up."""
    dsn = make_database("primary", migrate=False)
    everything = migration_files("primary")
    before = [p for p in everything if p.name < "0007"]
    events = [AccessEvent.model_validate(e) for e in planted_events()]

    async def run() -> None:
        monkeypatch.setattr("shared.db.migration_files", lambda target: before)
        await apply_migrations(dsn, "primary")
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        try:
            await store_events(pool, events[:1000])
            await _refresh_until(pool, 700, max_rows=350)
            assert await pool.fetchval("SELECT to_regclass('access_rollup_hours_week')") is None
            monkeypatch.setattr("shared.db.migration_files", lambda target: everything)
            assert await apply_migrations(dsn, "primary") == [p.name for p in everything[len(before) :]]
            assert await _rolled_up(pool) == 700
            await store_events(pool, events[1000:])
            await _assert_same(pool, PLANTED_FILTERS[:5])
            await _refresh_until(pool, len(events))
            assert await _rollup_total(pool) == len(events)
            await _assert_same(pool, PLANTED_FILTERS[:5])
        finally:
            await pool.close()

    asyncio.run(run())
