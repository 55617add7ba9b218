"""Event → stored latency at a steady 5,000 events/s through one event-processor process.

Events carry the time they were produced as their `timestamp`; PostgreSQL stamps
`ingested_at` with `clock_timestamp()` when the row is written, so `ingested_at - time` is the
whole path producer → broker → processor → PostgreSQL (same machine, same clock). The first
two seconds are left out as warm-up. Baseline in the same run: the producer's own send → ack
latency (acks=all), the part of the path the processor cannot influence.
Target: p99 <= 500 ms.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from bench._gateway_bench import (
    count_rows,
    cpu_count,
    event_bytes,
    fresh_database,
    processor_process,
    servers,
    unique_name,
)
from shared.kafka import create_producer, ensure_topics

RATE = 5_000
TICK_S = 0.01
TARGET_P99_S = 0.5


async def _produce_steady(bootstrap: str, topic: str, seconds: float) -> tuple[int, list[float]]:
    producer = create_producer(bootstrap)
    await producer.start()
    ack_latencies: list[float] = []
    sent = 0
    try:
        per_tick = int(RATE * TICK_S)
        started = time.perf_counter()
        tick = 0
        while time.perf_counter() - started < seconds:
            sent_at = time.perf_counter()
            now = datetime.now(UTC)
            futures = []
            for _ in range(per_tick):
                key, value = event_bytes(sent, timestamp=now, seed=3)
                futures.append(await producer.send(topic, value, key=key))
                sent += 1
            if tick % 10 == 0:
                await futures[-1]
                ack_latencies.append(time.perf_counter() - sent_at)
            tick += 1
            # Hold the rate: sleep until the next tick is due.
            await asyncio.sleep(max(0.0, started + tick * TICK_S - time.perf_counter()))
        await producer.flush()
    finally:
        await producer.stop()
    return sent, ack_latencies


async def _latencies(dsn: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("""
            WITH lat AS (
                SELECT extract(epoch FROM ingested_at - time) AS s FROM access_events
                WHERE time > (SELECT min(time) FROM access_events) + interval '2 seconds')
            SELECT count(*) AS n,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY s) AS p99,
                   max(s) AS max
            FROM lat""")
        assert row is not None
        return {k: float(row[k] or 0) for k in ("n", "p50", "p99", "max")}
    finally:
        await conn.close()


async def _wait_consuming(url: str, timeout_s: float = 60) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/status")).json().get("consuming"):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the event processor did not start consuming")


async def _measure(dsn: str, bootstrap: str, topic: str, url: str, seconds: float) -> dict[str, Any]:
    await _wait_consuming(url)
    await asyncio.sleep(1.5)  # let the group settle, so no rebalance lands inside the window
    sent, acks = await _produce_steady(bootstrap, topic, seconds)
    for _ in range(300):  # up to 30 s for the tail to be stored
        if await count_rows(dsn) >= sent:
            break
        await asyncio.sleep(0.1)
    lat = await _latencies(dsn)
    acks.sort()
    return {
        "events": sent,
        "stored": await count_rows(dsn),
        "measured_events": int(lat["n"]),
        "p50_ms": round(lat["p50"] * 1000, 1),
        "p99_ms": round(lat["p99"] * 1000, 1),
        "max_ms": round(lat["max"] * 1000, 1),
        "baseline_producer_ack_p50_ms": round(acks[len(acks) // 2] * 1000, 1) if acks else None,
        "baseline_producer_ack_p99_ms": round(acks[int(len(acks) * 0.99)] * 1000, 1) if acks else None,
    }


def run(quick: bool) -> dict[str, Any]:
    seconds = 10.0 if quick else 60.0
    with servers() as (pg_server, bootstrap), fresh_database(pg_server) as dsn:
        topic = unique_name("bench-latency")
        asyncio.run(ensure_topics(bootstrap, {topic: 4, topic + ".dlq": 1}))
        with processor_process(dsn, bootstrap, topic) as processor:
            result = asyncio.run(_measure(dsn, bootstrap, topic, processor.url, seconds))
    return {
        "rate_events_per_s": RATE,
        "seconds": seconds,
        "cpus": cpu_count(),
        **result,
        "target_p99_ms": TARGET_P99_S * 1000,
        "meets_target": result["p99_ms"] <= TARGET_P99_S * 1000 and result["stored"] == result["events"],
    }
