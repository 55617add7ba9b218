"""Cold analytics as history grows (rollups against raw rows), and warm answers via the gateway.

Measures, in one run on the same data (the same 28 days of a site: 5,000 people, 200 doors,
3 facilities), first at `events` and then at ten times as many:
- `fill_s`, `refresh_s`, `refresh_rows_per_s`: storing the rows, then rolling them up
  (`access_rollups_refresh`, what the analytics service does in the background) and building
  the months and weeks from their days (`access_rollups_compact`);
- `cold_summary_s` / `cold_patterns_s`: the answers as served on a cache miss (median of 3),
  from the rollups; `raw_*`: the same answers from raw rows only (the previous plan: one scan
  of every event), checked equal;
- `cold_anomalies_s` / `cold_anomaly_inputs_s`: the anomaly analysis over its default window
  (31 days up to the newest event: all 28 days), the whole answer and its database inputs
  (`db.anomaly_inputs`), with hour profiles from the hour rollups and the denials of people with
  a burst; `raw_anomalies_s` / `raw_anomaly_inputs_s`: the previous plan (profiles from raw rows,
  every denial), checked equal (both use the partial indexes on denials and flagged rows);
- `cold_pandas_s` (small size only): every row moved into pandas instead (the reason SQL
  aggregation was chosen);
- the rollups' cost to ingestion: the processor's store path (binary COPY, batches of 5,000
  events, two stores at once; each phase on its own copy of one database that already holds as
  many events, rolled up) alone, against the same stores with the service's refresher
  running (which defers to a burst of ingestion), and until the rollups hold every event and
  the months and weeks are built (stored and rolled up: the cost when ingestion never pauses),
  how many rows the rollups were behind when the stores ended, and the refresh's database time
  per row as a share of the store's;
- via the gateway at the small size: the first request (cold, HTTP), warm p50/p95 (L1 hits),
  and the same warm requests straight to analytics.
Targets: cold summary over the large size <= 300 ms; cold patterns large <= 3x small; rollup
cost <= 15 % of the ingest rate; cold <= 2 s and warm p50 <= 5 ms at the small size.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pandas as pd

from bench._gateway_bench import fresh_database, servers
from services.analytics import anomalies, patterns, rollups
from services.analytics.filters import EventFilter
from services.analytics.rollup_refresher import BATCH_ROWS, RollupRefresher
from services.analytics.summary import access_summary
from services.analytics.worker_pool import WorkerPool
from shared.db import drop_database, with_database
from shared.event_store import store_event_rows
from shared.events import AccessEvent, AccessResult, event_record
from tools.dev.fleet import ServiceProcess
from tools.dev.servers import unique_name

# Plausible data: 5,000 people, 200 doors, 3 facilities, office hours weighted, ~8% denied,
# spread over the same 28 days whatever the count ($3), stored in time order like a live stream
# (each statement sorted; statements follow each other in time).
_GENERATE = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, badge_status,
                           door_held_open_time, facility_id)
SELECT 'bench-' || g,
       timestamptz '2025-01-06 00:00:00+00' + (($4::bigint + g - $1) * 28 / $3) * interval '1 day'
         + CASE WHEN g % 4 = 0 THEN ((g * 7919) % 86400) * interval '1 second'
           ELSE interval '9 hours' + ((g * 7919) % 32400) * interval '1 second' END,
       'p' || ((g * 31) % 5000), 'd' || ((g * 17) % 200), 'b' || ((g * 31) % 5000),
       CASE WHEN g % 13 = 0 THEN 'Denied' WHEN g % 101 = 0 THEN 'Timeout' ELSE 'Granted' END,
       CASE WHEN g % 97 = 0 THEN 'Expired' WHEN g % 89 = 0 THEN 'Invalid' ELSE 'Valid' END,
       (g % 20)::float8, 'f' || (g % 3)
FROM generate_series($1::bigint, $2::bigint) AS g
ORDER BY 2
"""


async def _fill(dsn: str, first_row: int, last_row: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        step, count = 250_000, last_row - first_row + 1
        for first in range(first_row, last_row + 1, step):
            last = min(last_row, first + step - 1)
            await conn.execute(_GENERATE, first, last, count, first - first_row, timeout=600)
        await conn.execute("VACUUM ANALYZE access_events", timeout=600)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _timed(fn: Callable[[], Awaitable[Any]], runs: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


async def _refresh(dsn: str) -> tuple[float, int]:
    """Roll up everything stored and build the months and weeks it touched (the refresher does
    that once caught up); waits out transactions of other sessions holding xmin back."""
    conn = await asyncpg.connect(dsn)
    try:
        started, rows, idle_since = time.perf_counter(), 0, time.perf_counter()
        stored = int(await conn.fetchval("SELECT count(*) FROM access_events"))
        while int(await conn.fetchval("SELECT rows_total FROM access_rollup_state")) < stored:
            done = await rollups.refresh(conn, BATCH_ROWS)
            rows += done
            if done == 0:
                if time.perf_counter() - idle_since > 120:
                    raise RuntimeError("rollup refresh made no progress for 120 s (a long transaction?)")
                await asyncio.sleep(0.2)
            else:
                idle_since = time.perf_counter()
        while await rollups.compact(conn, settled_s=0, timeout_s=600):
            pass
        elapsed = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE", timeout=900)  # outside the measured time
        return elapsed, rows
    finally:
        await conn.close()


async def _cold(dsn: str, *, raw_patterns: bool) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    workers = WorkerPool(2)
    await workers.start()
    flt = EventFilter()
    try:

        async def summary(use_rollups: bool = True) -> dict[str, Any]:
            return await access_summary(pool, flt, use_rollups=use_rollups)

        async def patterns_doc(use_rollups: bool = True) -> dict[str, Any]:
            aggregates = await patterns.fetch_aggregates(pool, flt, use_rollups=use_rollups)
            return await workers.run(patterns.build_patterns, aggregates)

        summary_s, summary_doc = await _timed(summary)
        patterns_s, doc = await _timed(patterns_doc)
        raw_summary_s, raw_summary_doc = await _timed(lambda: summary(False), runs=1)
        assert raw_summary_doc == summary_doc, "summary: rollups and raw rows disagree"
        out: dict[str, Any] = {
            "total_records": doc["data_summary"]["total_records"],
            "cold_summary_s": round(summary_s, 3),
            "cold_patterns_s": round(patterns_s, 3),
            "raw_summary_s": round(raw_summary_s, 3),
            "rollup_rows": int(
                await pool.fetchval(
                    "SELECT (SELECT count(*) FROM access_rollup_time_month) + "
                    "(SELECT count(*) FROM access_rollup_people_month)"
                )
            ),
        }
        if raw_patterns:
            raw_patterns_s, raw_doc = await _timed(lambda: patterns_doc(False), runs=1)
            assert raw_doc == doc, "patterns: rollups and raw rows disagree"
            out["raw_patterns_s"] = round(raw_patterns_s, 3)
        inputs_s: dict[bool, list[float]] = {True: [], False: []}
        params = anomalies.AnomalyParameters()

        async def anomaly_doc(use_rollups: bool = True) -> dict[str, Any]:
            bounded = anomalies.bounded_filter(
                flt, await anomalies.newest_event(pool, flt), anomalies.AnomalyWindow()
            )
            t0 = time.perf_counter()
            inputs = await anomalies.fetch_inputs(pool, bounded, params, use_rollups=use_rollups)
            inputs_s[use_rollups].append(time.perf_counter() - t0)
            detected = await workers.run(
                anomalies.detect_in_frames, inputs["denials"], inputs["profile"], params
            )
            unusual = await anomalies.fetch_unusual_events(pool, bounded, detected["cells"])
            return anomalies.assemble(inputs, detected, unusual, params, bounded)

        anomalies_s, anomalies_doc = await _timed(anomaly_doc)
        raw_anomalies_s, raw_anomalies_doc = await _timed(lambda: anomaly_doc(False), runs=1)
        assert raw_anomalies_doc == anomalies_doc, "anomalies: rollups and raw rows disagree"
        out.update(
            {
                "cold_anomalies_s": round(anomalies_s, 3),
                "cold_anomaly_inputs_s": round(statistics.median(inputs_s[True]), 3),
                "raw_anomalies_s": round(raw_anomalies_s, 3),
                "raw_anomaly_inputs_s": round(inputs_s[False][0], 3),
                "anomaly_findings": anomalies_doc["counts"],
            }
        )
        return out
    finally:
        workers.close()
        await pool.close()


async def _pandas(dsn: str) -> dict[str, Any]:
    """Every row into pandas: the alternative to aggregating in the database, checked equal."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        expected = patterns.build_patterns(await patterns.fetch_aggregates(pool, EventFilter()))
        t0 = time.perf_counter()
        rows = await pool.fetch(
            "SELECT time, person_id, door_id, access_result, badge_status FROM access_events", timeout=600
        )
        fetched = time.perf_counter() - t0
        frame = pd.DataFrame(rows, columns=["time", "person_id", "door_id", "access_result", "badge_status"])
        del rows
        pandas_doc = patterns.build_patterns(patterns.aggregates_from_frame(frame))
        assert pandas_doc == expected, "pandas and SQL disagree"
        return {"cold_pandas_s": round(time.perf_counter() - t0, 3), "cold_pandas_fetch_s": round(fetched, 3)}
    finally:
        await pool.close()


# The event processor's defaults: rows per batch, batches being stored at once.
INGEST_BATCH = 5_000
INGEST_STORES_IN_FLIGHT = 2


def _store_batches(count: int, batch: int) -> list[list[tuple[Any, ...]]]:
    """Rows (EVENT_COLUMNS order) of `count` events of one day, in time order, as a live stream."""
    start = datetime(2025, 2, 3, tzinfo=UTC)
    rows = [
        event_record(
            AccessEvent(
                event_id=f"ingest-{i}",
                timestamp=start + timedelta(seconds=i * 86400 / count),
                person_id=f"p{(i * 31) % 5000}",
                door_id=f"d{(i * 17) % 200}",
                badge_id=f"b{(i * 31) % 5000}",
                access_result=AccessResult.DENIED if i % 13 == 0 else AccessResult.GRANTED,
                facility_id=f"f{i % 3}",
            )
        )
        for i in range(count)
    ]
    return [rows[i : i + batch] for i in range(0, count, batch)]


async def _prepare_ingest(dsn: str, batches: list[list[tuple[Any, ...]]]) -> None:
    """The database every phase of `_ingest_cost` starts from: the events of `batches` (under
    other ids) already stored and rolled up, as in a running fleet."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for batch in batches:
            await store_event_rows(conn, [(f"{row[0]}-warm", *row[1:]) for row in batch])
    finally:
        await conn.close()
    await _refresh(dsn)


@contextlib.asynccontextmanager
async def _copy_of(server_dsn: str, template: str) -> AsyncIterator[str]:
    """A new database holding what database `template` holds, made by copying its files (which
    starts with a checkpoint): every phase of `_ingest_cost` starts from the same table, indexes,
    rollups and WAL position, where phases sharing one database would each find the table
    grown by the ones before (there a run's last store alone ran 3-27 % slower than its first)."""
    name = unique_name("bench_ingest")
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY', timeout=600)
    finally:
        await conn.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        await drop_database(server_dsn, name)


async def _ingest_cost(
    server_dsn: str, template: str, batches: list[list[tuple[Any, ...]]]
) -> dict[str, Any]:
    """The event processor's store path (`store_event_rows`: binary COPY, batches of
    INGEST_BATCH, INGEST_STORES_IN_FLIGHT stores at once on their own connections), alone and with
    the analytics service's refresher running behind it, and with one that never defers, each
    phase on its own copy of database `template` (`_prepare_ingest`).

    The refresher runs as the service runs it (deferring to a burst of ingestion, see
    `RollupRefresher`) and has taken a turn before the stores start, as in a running fleet. With
    it, two rates: the stores' own (what ingestion keeps while the rollups run: the target), and
    stored and rolled up, until the rollups hold the last event and the months and weeks the
    events touched are built (the work deferred is still
    work: what a fleet sustains when a burst never ends). And the refresh's own time per row
    against the store's, each measured alone."""
    count = sum(len(batch) for batch in batches)

    async def store(pool: asyncpg.Pool) -> float:
        async def writer(index: int) -> None:
            async with pool.acquire() as conn:
                for b in batches[index::INGEST_STORES_IN_FLIGHT]:
                    await store_event_rows(conn, b)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(INGEST_STORES_IN_FLIGHT)))
        return time.perf_counter() - t0

    async def with_refresher(pool: asyncpg.Pool, *, eager: bool) -> dict[str, float]:
        # Months and weeks built as soon as caught up (the service waits a minute): their
        # cost is counted in the catch-up.
        refresher = RollupRefresher(pool, settle_s=0, **({"max_defer_s": 0} if eager else {}))
        refresher.start()
        try:
            started = time.perf_counter()
            while refresher.turns == 0:  # a running fleet's refresher, not one starting up
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the refresher took no turn within 60 s")
                await asyncio.sleep(0.05)
            store_s = await store(pool)
            deferred = refresher.deferred
            stored = int(await pool.fetchval("SELECT count(*) FROM access_events"))
            behind = stored - int(await pool.fetchval("SELECT rows_total FROM access_rollup_state"))
            # The refresher keeps going until it has rolled up everything: stored *and*
            # rolled up is what a fleet sustains when a burst never ends.
            started = time.perf_counter()
            while (
                int(await pool.fetchval("SELECT rows_total FROM access_rollup_state")) < stored
                or await pool.fetchval("SELECT count(*) FROM access_rollup_stale") > 0
            ):
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the refresher did not catch up within 600 s")
                await asyncio.sleep(0.05)
            catch_up_s = time.perf_counter() - started
        finally:
            await refresher.stop()
        return {"store_s": store_s, "catch_up_s": catch_up_s, "deferred": deferred, "behind": behind}

    # The service's refresher (deferring to the burst), and one that never defers (rolls up
    # beside the stores: max_defer_s 0), against the stores alone, in the order alone,
    # deferring, eager, eager, deferring, alone, so that a drift of the machine reaches each
    # alike; each figure is the mean of its two.
    alone: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {"deferring": [], "eager": []}
    solo_s, solo_rows = 0.0, 0
    for phase in ("alone", "deferring", "eager", "eager", "deferring", "alone", "solo"):
        async with _copy_of(server_dsn, template) as dsn:
            pool = await asyncpg.create_pool(
                dsn, min_size=INGEST_STORES_IN_FLIGHT, max_size=INGEST_STORES_IN_FLIGHT + 2
            )
            assert pool is not None
            try:
                if phase == "alone":
                    alone.append(await store(pool))
                elif phase == "solo":  # rolling up alone, without stores: its time per row
                    await store(pool)
                    solo_s, solo_rows = await _refresh(dsn)
                else:
                    runs[phase].append(await with_refresher(pool, eager=phase == "eager"))
            finally:
                await pool.close()
    alone_s = statistics.mean(alone)
    alone_rate = count / alone_s

    def policy(measured: list[dict[str, float]]) -> dict[str, Any]:
        store_s = statistics.mean(r["store_s"] for r in measured)
        catch_up_s = statistics.mean(r["catch_up_s"] for r in measured)
        # Stored and rolled up, from the first store until the rollups hold the last event.
        sustained = count / (store_s + catch_up_s)
        return {
            "ingest_rate": round(count / store_s),
            "ingest_rate_runs": [round(count / r["store_s"]) for r in measured],
            "ingest_rate_ratio": round(count / store_s / alone_rate, 3),
            "turns_deferred_while_storing": [int(r["deferred"]) for r in measured],
            "rows_not_rolled_up_when_stores_ended": [int(r["behind"]) for r in measured],
            "catch_up_s": round(catch_up_s, 2),
            "catch_up_s_runs": [round(r["catch_up_s"], 2) for r in measured],
            "ingest_rate_stored_and_rolled_up": round(sustained),
            "stored_and_rolled_up_ratio": round(sustained / alone_rate, 3),
        }

    per_row_share = (solo_s / max(1, solo_rows)) / (alone_s / count)
    return {
        "ingest_events": count,
        "ingest_batch": INGEST_BATCH,
        "ingest_stores_in_flight": INGEST_STORES_IN_FLIGHT,
        "ingest_rate_alone": round(alone_rate),
        "ingest_rate_alone_runs": [round(count / a) for a in alone],
        # The service's refresher, and one that never defers, beside the same stores.
        "with_refresher": policy(runs["deferring"]),
        "with_eager_refresher": policy(runs["eager"]),
        "refresh_rows_per_s_alone": round(solo_rows / solo_s) if solo_s else None,
        "refresh_time_share_of_store_time": round(per_row_share, 3),
    }


@contextlib.contextmanager
def _fleet(dsn: str, bootstrap: str) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    topic = unique_name("bench-patterns")
    with TemporaryDirectory(prefix="bench-patterns-") as logs:
        env = {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ACCESS_EVENTS_TOPIC": topic,
            "ACCESS_EVENTS_DLQ_TOPIC": topic + ".dlq",
            "EVENT_PROCESSOR_GROUP_ID": topic + "-g",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "LOG_LEVEL": "WARNING",
            "CACHE_TYPE": "memory",
            "ANALYTICS_MAX_WORKERS": "2",
        }
        analytics = ServiceProcess("services.analytics", env, Path(logs)).start(
            wait_ready=True, timeout_s=120
        )
        gateway = ServiceProcess("services.gateway", {**env, "ANALYTICS_URL": analytics.url}, Path(logs))
        try:
            gateway.start(wait_ready=True, timeout_s=120)
            yield analytics, gateway
        finally:
            gateway.stop()
            analytics.stop()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _warm(dsn: str, bootstrap: str, requests: int) -> dict[str, Any]:
    path = "/api/v1/analytics/patterns"
    with _fleet(dsn, bootstrap) as (analytics, gateway), httpx.Client(timeout=120) as http:
        t0 = time.perf_counter()
        first = http.get(gateway.url + path)
        cold_http = time.perf_counter() - t0
        assert first.status_code == 200, first.text
        assert first.headers.get("x-cache") == "miss", first.headers

        def timed(url: str) -> list[float]:
            out = []
            for _ in range(requests):
                t = time.perf_counter()
                answer = http.get(url)
                out.append((time.perf_counter() - t) * 1000)
                assert answer.status_code == 200
            return out

        timed(gateway.url + path)[:0]  # connection and code paths warmed
        via_gateway = timed(gateway.url + path)
        direct = timed(analytics.url + path)
    p50 = statistics.median(via_gateway)
    return {
        "cold_http_s": round(cold_http, 3),
        "warm_gateway_p50_ms": round(p50, 3),
        "warm_gateway_p95_ms": round(_percentile(via_gateway, 0.95), 3),
        "warm_direct_p50_ms": round(statistics.median(direct), 3),
        "cold_over_warm": round(cold_http * 1000 / p50, 1),
        "warm_requests": requests,
    }


def run(quick: bool) -> dict[str, Any]:
    small = 200_000 if quick else 1_000_000
    large = small * 10
    with servers() as (pg, kafka), fresh_database(pg) as dsn:
        result: dict[str, Any] = {"events_small": small, "events_large": large}
        fill_s = asyncio.run(_fill(dsn, 1, small))
        refresh_s, rows = asyncio.run(_refresh(dsn))
        result["small"] = {
            "fill_s": round(fill_s, 2),
            "refresh_s": round(refresh_s, 2),
            "refresh_rows_per_s": round(rows / refresh_s),
            **asyncio.run(_cold(dsn, raw_patterns=True)),
            **asyncio.run(_pandas(dsn)),
        }
        result.update(_warm(dsn, kafka, 100 if quick else 300))
        fill_s = asyncio.run(_fill(dsn, small + 1, large))
        refresh_s, rows = asyncio.run(_refresh(dsn))
        result["large"] = {
            "fill_s": round(fill_s, 2),
            "refresh_s": round(refresh_s, 2),
            "refresh_rows_per_s": round(rows / refresh_s),
            **asyncio.run(_cold(dsn, raw_patterns=True)),
        }
    with servers() as (pg, _kafka), fresh_database(pg) as dsn:
        batches = _store_batches(200_000 if quick else 1_000_000, INGEST_BATCH)
        asyncio.run(_prepare_ingest(dsn, batches))
        result["ingest"] = asyncio.run(_ingest_cost(pg, urlsplit(dsn).path.lstrip("/"), batches))
    small_doc, large_doc = result["small"], result["large"]
    result["ratios"] = {
        "cold_patterns_large_over_small": round(
            large_doc["cold_patterns_s"] / small_doc["cold_patterns_s"], 2
        ),
        "cold_summary_large_over_small": round(large_doc["cold_summary_s"] / small_doc["cold_summary_s"], 2),
        "raw_over_rollup_summary_large": round(large_doc["raw_summary_s"] / large_doc["cold_summary_s"], 1),
        "raw_over_rollup_anomaly_inputs_small": round(
            small_doc["raw_anomaly_inputs_s"] / small_doc["cold_anomaly_inputs_s"], 1
        ),
        "raw_over_rollup_anomaly_inputs_large": round(
            large_doc["raw_anomaly_inputs_s"] / large_doc["cold_anomaly_inputs_s"], 1
        ),
        "cold_anomalies_large_over_small": round(
            large_doc["cold_anomalies_s"] / small_doc["cold_anomalies_s"], 2
        ),
        "raw_over_rollup_patterns_large": round(
            large_doc["raw_patterns_s"] / large_doc["cold_patterns_s"], 1
        ),
        # What the rollups take from ingestion while it runs (the target), and from ingestion
        # that never pauses (the deferred work included).
        "rollup_ingest_cost": round(1 - result["ingest"]["with_refresher"]["ingest_rate_ratio"], 3),
        "rollup_sustained_cost": round(
            1 - result["ingest"]["with_refresher"]["stored_and_rolled_up_ratio"], 3
        ),
    }
    result["targets"] = {
        "cold_summary_large_s": 0.3,
        "cold_patterns_large_over_small": 3.0,
        "rollup_ingest_cost": 0.15,
        "cold_small_s": 2.0,
        "warm_p50_ms": 5.0,
    }
    result["meets_targets"] = (
        large_doc["cold_summary_s"] <= 0.3
        and result["ratios"]["cold_patterns_large_over_small"] <= 3.0
        and result["ratios"]["rollup_ingest_cost"] <= 0.15
        and small_doc["cold_patterns_s"] <= 2.0
        and result["warm_gateway_p50_ms"] <= 5.0
    )
    return result
