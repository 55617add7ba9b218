"""Unique-patterns analysis over stored events: cold (computed) vs warm (cached, via the gateway).

Measures, in one run on the same data:
- `cold_sql_s`: the analysis as served on a miss: one GROUPING SETS scan in PostgreSQL, then
  pandas on the aggregates in a worker process (median of 3);
- `cold_pandas_s`: the alternative, every row moved into pandas and aggregated there (the
  reason the SQL path was chosen);
- `cold_http_s`: the first request through the gateway (proxy → analytics → miss);
- `warm_gateway_p50_ms` / `p95`: repeated requests through the gateway (L1 hits);
- `warm_direct_p50_ms`: the same against analytics directly (the gateway's share);
- `cold_over_warm`: cold_http_s / warm p50.
Targets (issue 4): cold ≤ 2 s on 1,000,000 events, warm p50 ≤ 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import asyncpg
import httpx
import pandas as pd

from bench._gateway_bench import fresh_database, servers
from services.analytics import patterns
from services.analytics.filters import EventFilter
from services.analytics.worker_pool import WorkerPool
from tools.dev.fleet import ServiceProcess
from tools.dev.servers import unique_name

# Plausible data: 5,000 people, 200 doors, 3 facilities, office hours weighted, ~8% denied.
_GENERATE = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, badge_status,
                           door_held_open_time, facility_id)
SELECT 'bench-' || g,
       timestamptz '2025-01-06 00:00:00+00' + ((g * 7919) % (28 * 86400)) * interval '1 second'
         + CASE WHEN g % 4 = 0 THEN interval '0' ELSE interval '9 hours' - (((g * 7919) % 86400) % 32400)
           * interval '1 second' END,
       'p' || ((g * 31) % 5000), 'd' || ((g * 17) % 200), 'b' || ((g * 31) % 5000),
       CASE WHEN g % 13 = 0 THEN 'Denied' WHEN g % 101 = 0 THEN 'Timeout' ELSE 'Granted' END,
       CASE WHEN g % 97 = 0 THEN 'Expired' WHEN g % 89 = 0 THEN 'Invalid' ELSE 'Valid' END,
       (g % 20)::float8, 'f' || (g % 3)
FROM generate_series($1::bigint, $2::bigint) AS g
"""


async def _fill(dsn: str, rows: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        step = 250_000
        for first in range(1, rows + 1, step):
            await conn.execute(_GENERATE, first, min(rows, first + step - 1), timeout=600)
        await conn.execute("VACUUM ANALYZE access_events", timeout=600)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _cold(dsn: str) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    workers = WorkerPool(2)
    await workers.start()
    try:
        sql_times = []
        doc: dict[str, Any] = {}
        for _ in range(3):
            t0 = time.perf_counter()
            aggregates = await patterns.fetch_aggregates(pool, EventFilter())
            doc = await workers.run(patterns.build_patterns, aggregates)
            sql_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rows = await pool.fetch(
            "SELECT time, person_id, door_id, access_result, badge_status FROM access_events", timeout=600
        )
        fetched = time.perf_counter() - t0
        frame = pd.DataFrame(rows, columns=["time", "person_id", "door_id", "access_result", "badge_status"])
        del rows
        pandas_doc = await workers.run(patterns.build_patterns, patterns.aggregates_from_frame(frame))
        pandas_s = time.perf_counter() - t0
        assert pandas_doc == doc, "the two computations disagree"
        return {
            "cold_sql_s": round(statistics.median(sql_times), 3),
            "cold_sql_runs_s": [round(t, 3) for t in sql_times],
            "cold_pandas_s": round(pandas_s, 3),
            "cold_pandas_fetch_s": round(fetched, 3),
            "sql_over_pandas_speedup": round(pandas_s / statistics.median(sql_times), 2),
            "total_records": doc["data_summary"]["total_records"],
        }
    finally:
        workers.close()
        await pool.close()


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
    rows = 200_000 if quick else 1_000_000
    with servers() as (pg, kafka), fresh_database(pg) as dsn:
        fill_s = asyncio.run(_fill(dsn, rows))
        result: dict[str, Any] = {"events": rows, "fill_s": round(fill_s, 2)}
        result.update(asyncio.run(_cold(dsn)))
        result.update(_warm(dsn, kafka, 100 if quick else 300))
    result["targets"] = {"cold_s": 2.0, "warm_p50_ms": 5.0}
    result["meets_targets"] = result["cold_sql_s"] <= 2.0 and result["warm_gateway_p50_ms"] <= 5.0
    return result
