"""Replication throughput and freshness.

1. Catch-up: N rows (1,000,000; 100,000 with --quick) already in the primary, one `--once`
   style catch-up with the default batch size. Target: >= 100,000 rows/s. Baseline in the
   same run: the row-at-a-time copy the fleet replaced (read a page, `executemany` an INSERT per
   row) on a sample, to put the number in proportion.
2. Steady ingest: 5,000 events/s inserted into the primary (in 50 ms ticks) while the
   replicator runs continuously with its default interval; the backlog (age of the oldest
   event not yet replicated, the alerting gauge) is sampled every 100 ms. Target: max <= 2 s.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import asyncpg

from services.replicator.replication import backlog_seconds, read_watermark
from services.replicator.service import ReplicatorService
from services.replicator.settings import ReplicatorSettings
from shared.db import apply_migrations, drop_database, ensure_database, with_database
from tools.dev.servers import PostgresProvider, unique_name

_GENERATE = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, badge_status,
                           facility_id)
SELECT $1 || '-' || g, now() - ((g::bigint * 7919) % 86400) * interval '1 second', 'p' || (g % 500),
       'd' || (g % 40), 'b' || (g % 500), CASE WHEN g % 10 = 0 THEN 'Denied' ELSE 'Granted' END, 'Valid',
       'f' || (g % 3)
FROM generate_series(1, $2::int) AS g
"""

_NAIVE_INSERT = """
INSERT INTO access_events_replica (time, event_id, person_id, door_id, badge_id, access_result,
    badge_status, door_held_open_time, entry_without_badge, device_status, facility_id, extra, ingested_at,
    source_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING
"""


async def _databases(server: str) -> tuple[str, str, list[str]]:
    names = [unique_name("bench_primary"), unique_name("bench_replica")]
    for name in names:
        await ensure_database(server, name)
    primary, replica = (with_database(server, n) for n in names)
    await apply_migrations(primary, "primary")
    await apply_migrations(replica, "replica")
    return primary, replica, names


async def _naive_rows_per_second(primary: str, replica: str, rows: int) -> float:
    source = await asyncpg.connect(primary)
    target = await asyncpg.connect(replica)
    try:
        started = time.perf_counter()
        records = await source.fetch(
            "SELECT time, event_id, person_id, door_id, badge_id, access_result, badge_status, "
            "door_held_open_time, entry_without_badge, device_status, facility_id, extra::text, "
            "ingested_at, seq "
            "FROM access_events ORDER BY seq LIMIT $1",
            rows,
        )
        await target.executemany(_NAIVE_INSERT, [tuple(r) for r in records])
        elapsed = time.perf_counter() - started
        await target.execute("TRUNCATE access_events_replica")
    finally:
        await source.close()
        await target.close()
    return rows / elapsed


async def _catch_up(primary: str, replica: str, rows: int) -> dict[str, Any]:
    conn = await asyncpg.connect(primary)
    try:
        for start in range(0, rows, 250_000):
            await conn.execute(_GENERATE, f"c{start}", min(250_000, rows - start))
        await conn.execute("VACUUM ANALYZE access_events")
    finally:
        await conn.close()
    naive_sample = min(20_000, rows)
    naive = await _naive_rows_per_second(primary, replica, naive_sample)
    settings = ReplicatorSettings(DATABASE_URL=primary, TIMESCALE_URL=replica)
    service = ReplicatorService(settings)
    await service.open()
    try:
        await service.prepare()
        started = time.perf_counter()
        inserted = await service.catch_up()
        elapsed = time.perf_counter() - started
    finally:
        await service.close()
    assert inserted == rows, f"replicated {inserted} of {rows}"
    rate = rows / elapsed
    return {
        "rows": rows,
        "batch_size": settings.replication_batch_size,
        "seconds": round(elapsed, 2),
        "rows_per_second": round(rate),
        "target_rows_per_second": 100_000,
        "meets_target": rate >= 100_000,
        "baseline_row_at_a_time_rows_per_second": round(naive),
        "baseline_sample_rows": naive_sample,
        "speedup_vs_baseline": round(rate / naive, 1),
    }


async def _steady(primary: str, replica: str, seconds: float, rate: int) -> dict[str, Any]:
    settings = ReplicatorSettings(DATABASE_URL=primary, TIMESCALE_URL=replica)
    service = ReplicatorService(settings)
    await service.open()
    await service.prepare()
    await service.catch_up()  # start from caught up
    service.start()
    tick = 0.05
    per_tick = int(rate * tick)
    samples: list[float] = []
    inserted = 0
    stop = asyncio.Event()

    async def ingest() -> None:
        nonlocal inserted
        conn = await asyncpg.connect(primary)
        try:
            next_at = time.perf_counter()
            n = 0
            while not stop.is_set():
                await conn.execute(_GENERATE, f"s{n}", per_tick)
                inserted += per_tick
                n += 1
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            await conn.close()

    async def sample() -> None:
        source = await asyncpg.connect(primary)
        target = await asyncpg.connect(replica)
        try:
            while not stop.is_set():
                watermark = await read_watermark(target, settings.replication_stream)
                samples.append(await backlog_seconds(source, watermark))
                await asyncio.sleep(0.1)
        finally:
            await source.close()
            await target.close()

    started = time.perf_counter()
    tasks = [asyncio.create_task(ingest()), asyncio.create_task(sample())]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await service.close()
    samples.sort()
    worst = samples[-1] if samples else float("nan")
    return {
        "seconds": round(elapsed, 1),
        "ingest_events_per_second": round(inserted / elapsed),
        "replication_interval_s": settings.replication_interval,
        "backlog_p50_s": round(statistics.median(samples), 3),
        "backlog_p95_s": round(samples[int(len(samples) * 0.95) - 1], 3),
        "backlog_max_s": round(worst, 3),
        "target_backlog_max_s": 2.0,
        "meets_target": worst <= 2.0,
        "samples": len(samples),
    }


async def _main(server: str, quick: bool) -> dict[str, Any]:
    created: list[str] = []
    try:
        primary, replica, names = await _databases(server)
        created += names
        catch_up = await _catch_up(primary, replica, 100_000 if quick else 1_000_000)
        primary2, replica2, names2 = await _databases(server)
        created += names2
        steady = await _steady(primary2, replica2, 10 if quick else 30, 5_000)
    finally:
        for name in created:
            await drop_database(server, name)
    return {"catch_up": catch_up, "steady_ingest": steady}


def run(quick: bool) -> dict[str, Any]:
    provider = PostgresProvider()  # TEST_DATABASE_URL, the machine's server, or an embedded one
    try:
        return asyncio.run(_main(provider.get(), quick))
    finally:
        provider.close()
