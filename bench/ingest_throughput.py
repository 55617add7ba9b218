"""Sustained ingestion: broker → one event-processor process → PostgreSQL, in events per second.

The topic (4 partitions) is filled first, then one `python -m services.gateway.event_processor`
process drains it while the row count is sampled every 200 ms; the rate is measured between
the first stored row and the last, so process start-up and the group join are not counted
(they are reported apart). Filling first keeps the producer off the CPU while the processor
runs: on a 2-core machine a concurrent producer would take a core from the system measured.

Baseline in the same run: the same events parsed and inserted in-process (no Kafka, no
commits) with the same insert path, batch by batch: the ceiling the processor can reach.
Target: >= 20,000 events/s on 2 cores.

The cost of a durable broker log, same run: the embedded broker that `make run` starts keeps
its log on disk (an fsynced file per record batch, through `tools.dev.object_store`), where
the test suite's keeps it in memory. Both are filled and drained with the same events, and
`broker_storage` gives each one's fill (producer) and drain (processor) rates and the ratios.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._gateway_bench import (
    count_rows,
    cpu_count,
    event_bytes,
    fresh_database,
    processor_process,
    produce,
    servers,
    unique_name,
)
from services.gateway.event_processor.sink import EventSink
from shared.breaker import CircuitBreaker
from shared.db import create_pool
from shared.events import parse_event_bytes
from shared.kafka import create_producer, ensure_topics
from tools.dev.embedded import EmbeddedKafka

TARGET_EVENTS_PER_S = 20_000


async def _in_process_rate(dsn: str, count: int, batch_size: int) -> float:
    raw = [event_bytes(n, seed=2)[1] for n in range(count)]
    pool = await create_pool(dsn, min_size=1, max_size=1)
    sink = EventSink(pool, CircuitBreaker("bench_database"))
    try:
        started = time.perf_counter()
        for i in range(0, count, batch_size):
            events = [parse_event_bytes(value) for value in raw[i : i + batch_size]]
            await sink.store(events)
        return count / (time.perf_counter() - started)
    finally:
        await pool.close()


async def _drain(dsn: str, expected: int, timeout_s: float) -> dict[str, Any]:
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()
    reported = started
    while time.perf_counter() - started < timeout_s:
        n = await count_rows(dsn)
        samples.append((time.perf_counter() - started, n))
        if n >= expected:
            break
        if time.perf_counter() - reported >= 5:
            reported = time.perf_counter()
            print(f"[bench] ingest_throughput: stored {n:,} of {expected:,}", file=sys.stderr, flush=True)
        await asyncio.sleep(0.2)
    first = next(((t, n) for t, n in samples if n > 0), None)
    last_t, last_n = samples[-1]
    if first is None or last_t == first[0]:
        return {"stored": last_n, "events_per_s": 0.0}
    rate = (last_n - first[1]) / (last_t - first[0])
    # The best one-second stretch, to show the steady rate separately from warm-up.
    best = 0.0
    for i, (t0, n0) in enumerate(samples):
        for t1, n1 in samples[i + 1 :]:
            if t1 - t0 >= 1.0:
                best = max(best, (n1 - n0) / (t1 - t0))
                break
    return {
        "stored": last_n,
        "events_per_s": round(rate),
        "best_1s_events_per_s": round(best),
        "seconds_to_first_row": round(first[0], 2),
        "drain_seconds": round(last_t - first[0], 2),
    }


async def _ack_latency_ms(bootstrap: str, sends: int) -> dict[str, float]:
    """Latency of one acknowledged send of one event at a time: what a small ingest request waits."""
    topic = unique_name("bench-ack")
    await ensure_topics(bootstrap, {topic: 1})
    producer = create_producer(bootstrap)
    await producer.start()
    try:
        latencies = []
        for n in range(sends):
            started = time.perf_counter()
            await producer.send_and_wait(topic, event_bytes(n)[1])
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await producer.stop()
    latencies.sort()
    return {
        "ack_p50_ms": round(latencies[len(latencies) // 2], 2),
        "ack_p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
    }


def _broker_run(pg_server: str, bootstrap: str, count: int, batch_size: int, label: str) -> dict[str, Any]:
    """Fill a new topic on `bootstrap` with `count` events, then drain it with one processor."""
    with fresh_database(pg_server) as dsn:
        topic = unique_name(f"bench-ingest-{label}")
        print(f"[bench] ingest_throughput: {label} broker, producing {count:,}", file=sys.stderr, flush=True)
        fill_seconds = asyncio.run(produce(bootstrap, topic, count))
        with processor_process(dsn, bootstrap, topic, EVENT_PROCESSOR_BATCH_SIZE=str(batch_size)):
            drained = asyncio.run(_drain(dsn, count, timeout_s=300))
    return {
        "fill_seconds": round(fill_seconds, 1),
        "fill_events_per_s": round(count / fill_seconds),
        **drained,
        **asyncio.run(_ack_latency_ms(bootstrap, 300)),
    }


def _storage_comparison(pg_server: str, count: int, batch_size: int) -> dict[str, Any]:
    """The embedded broker with its log in memory and on disk, same events, same run."""
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        for label, storage in (("memory", None), ("disk", Path(tmp) / "broker")):
            with EmbeddedKafka(storage_dir=storage) as kafka:
                runs[label] = _broker_run(pg_server, kafka.bootstrap_servers, count, batch_size, label)
    memory, disk = runs["memory"], runs["disk"]
    return {
        "events": count,
        **runs,
        "disk_to_memory_fill_ratio": round(disk["fill_events_per_s"] / memory["fill_events_per_s"], 3),
        "disk_to_memory_ack_p50_ratio": round(disk["ack_p50_ms"] / memory["ack_p50_ms"], 2),
        "disk_to_memory_drain_ratio": (
            round(disk["events_per_s"] / memory["events_per_s"], 3) if memory["events_per_s"] else None
        ),
    }


def run(quick: bool) -> dict[str, Any]:
    count = 150_000 if quick else 1_200_000
    batch_size = 5_000
    with servers() as (pg_server, bootstrap):
        with fresh_database(pg_server) as baseline_dsn:
            baseline = asyncio.run(_in_process_rate(baseline_dsn, 50_000 if quick else 200_000, batch_size))
        with fresh_database(pg_server) as dsn:
            topic = unique_name("bench-ingest")
            fill_seconds = asyncio.run(produce(bootstrap, topic, count))
            with processor_process(dsn, bootstrap, topic, EVENT_PROCESSOR_BATCH_SIZE=str(batch_size)):
                drained = asyncio.run(_drain(dsn, count, timeout_s=300))
        storage = _storage_comparison(pg_server, 100_000 if quick else 400_000, batch_size)
    rate = drained["events_per_s"]
    return {
        "events": count,
        "partitions": 4,
        "processor_processes": 1,
        "cpus": cpu_count(),
        "batch_size": batch_size,
        "fill_seconds": round(fill_seconds, 1),
        **drained,
        "baseline_in_process_events_per_s": round(baseline),
        "ratio_to_baseline": round(rate / baseline, 3) if baseline else None,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": rate >= TARGET_EVENTS_PER_S and drained["stored"] == count,
        "broker_storage": storage,
    }
