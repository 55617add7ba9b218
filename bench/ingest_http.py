"""HTTP ingestion against the raw producer: events/s through `POST /api/v1/events` and through
aiokafka alone, on the same broker in the same run.

The gateway runs as `make run` starts it (its own process, the event processor in another, so
`GATEWAY_RUN_EVENT_PROCESSOR=false` here). A separate load-client process (`bench._http_load`,
aiohttp, bodies encoded before the clock starts) keeps 50 concurrent clients posting arrays of
100 events for a fixed time. The baseline is the same kind of events produced straight from
Python with aiokafka (acks=all, the fleet's producer settings), once per-message `send` and once
per-partition `send_batch`; the better of the two is the baseline, measured before and after the
HTTP round so drift hits both alike.

`BENCH_GATEWAY_WORKERS=N` runs the gateway with `GATEWAY_WORKERS=N` (default 1, as `make run`).

Reported: both rates and their ratio (target >= 0.5), POST p50/p95/p99 (target p99 <= 500 ms),
the single-client latency, and for each process during the HTTP round (gateway, broker, load
client) the cores it used and the cores' worth of time it sat runnable waiting for a CPU, so the
limiting resource is visible: a process short of CPU waits, one short of work does neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psutil
from aiokafka.partitioner import DefaultPartitioner

from bench._gateway_bench import cpu_count, event_bytes, process_tree, servers, unique_name
from bench._http_load import drive
from shared.kafka import create_producer, ensure_topics
from tools.dev.fleet import ServiceProcess

CLIENTS = 50
BATCH = 100
PARTITIONS = 4
TARGET_RATIO = 0.5
TARGET_P99_MS = 500.0


async def _raw_send(bootstrap: str, topic: str, count: int) -> float:
    """Events/s with one `send` per event, `BATCH` at a time, every ack awaited."""
    messages = [event_bytes(n, seed=7) for n in range(count)]
    producer = create_producer(bootstrap)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = []
        for key, value in messages:
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def _raw_batches(bootstrap: str, topic: str, count: int) -> float:
    """Events/s with the events of each `BATCH` grouped per partition into `send_batch` calls."""
    messages = [event_bytes(n, seed=8) for n in range(count)]
    producer = create_producer(bootstrap)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        choose = DefaultPartitioner()
        started = time.perf_counter()
        futures = []
        for first in range(0, count, BATCH):
            batches: dict[int, Any] = {}
            for key, value in messages[first : first + BATCH]:
                partition = choose(key, partitions, partitions)
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            for partition, batch in batches.items():
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


def _raw(bootstrap: str, topic: str, count: int) -> dict[str, tuple[float, float]]:
    """Per mode: (events/s, CPU microseconds of this process per event)."""
    out = {}
    for mode, produce in (("send", _raw_send), ("send_batch", _raw_batches)):
        cpu = time.process_time()
        rate = asyncio.run(produce(bootstrap, topic, count))
        # The events are encoded before the clock starts; their CPU is a small part of this.
        out[mode] = (rate, (time.process_time() - cpu) / count * 1e6)
    return out


def _listening_pid(port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    return None


@contextlib.contextmanager
def _gateway(bootstrap: str, topic: str, workers: int) -> Iterator[ServiceProcess]:
    with TemporaryDirectory(prefix="bench-ingest-http-") as tmp:
        gateway = ServiceProcess(
            "services.gateway",
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "ACCESS_EVENTS_TOPIC": topic,
                "ACCESS_EVENTS_PARTITIONS": str(PARTITIONS),
                "GATEWAY_RUN_EVENT_PROCESSOR": "false",
                "GATEWAY_WORKERS": str(max(1, workers)),
                # INGEST_MEMORY_BUDGET_MB is the gateway's total; each worker's share must
                # still hold one maximum request (160 MiB at the default MAX_REQUEST_BYTES).
                "INGEST_MEMORY_BUDGET_MB": str(256 * max(1, workers)),
                "LOG_LEVEL": "WARNING",
            },
            Path(tmp),
        )
        try:
            yield gateway.start(wait_ready=True, timeout_s=120)
        finally:
            gateway.stop()


def run(quick: bool) -> dict[str, Any]:
    seconds = 5.0 if quick else 15.0
    raw_count = 20_000 if quick else 60_000
    workers = int(os.environ.get("BENCH_GATEWAY_WORKERS", "0")) or None
    with servers() as (_, bootstrap):
        topic = unique_name("bench-ingest-http")
        asyncio.run(ensure_topics(bootstrap, {topic: PARTITIONS}))
        broker_pid = _listening_pid(int(bootstrap.rsplit(":", 1)[1]))
        raw_before = _raw(bootstrap, topic, raw_count)
        with _gateway(bootstrap, topic, workers or 0) as gateway:
            assert gateway.proc is not None
            watch = {"gateway": process_tree(gateway.proc.pid)}
            if broker_pid:
                watch["broker"] = process_tree(broker_pid)
            single, _ = drive(gateway.url, clients=1, batch=BATCH, seconds=2.0, max_requests=200, watch={})
            load_avg = os.getloadavg()[0]
            report, per_process = drive(
                gateway.url,
                clients=CLIENTS,
                batch=BATCH,
                seconds=seconds,
                max_requests=1_000_000,
                watch=watch,
            )
            gateway_processes = len(watch["gateway"])
        raw_after = _raw(bootstrap, topic, raw_count)
    raw_modes = {mode: (raw_before[mode][0] + raw_after[mode][0]) / 2 for mode in raw_before}
    raw_cpu = {mode: (raw_before[mode][1] + raw_after[mode][1]) / 2 for mode in raw_before}
    baseline = max(raw_modes.values())
    via = float(report["events_per_s"])
    ratio = via / baseline if baseline else 0.0
    return {
        "clients": CLIENTS,
        "events_per_request": BATCH,
        "seconds": seconds,
        "cpus": cpu_count(),
        "load_average_1m": round(load_avg, 2),
        "gateway_processes": gateway_processes,
        "raw_produce_events_per_s": {mode: round(rate) for mode, rate in raw_modes.items()},
        "raw_produce_cpu_us_per_event": {mode: round(us, 1) for mode, us in raw_cpu.items()},
        "gateway_events_per_s": round(via),
        "gateway_cpu_us_per_event": round(per_process["gateway"]["cpu_cores"] / via * 1e6, 1)
        if via
        else None,
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "post_p50_ms": report["post_p50_ms"],
        "post_p95_ms": report["post_p95_ms"],
        "post_p99_ms": report["post_p99_ms"],
        "target_p99_ms": TARGET_P99_MS,
        "statuses": report["statuses"],
        "single_client_p50_ms": single["post_p50_ms"],
        # Per process during the HTTP round: cores used, and cores' worth of time it was
        # runnable but waiting for a CPU (the machine's other work).
        "processes": per_process,
        "meets_target": ratio >= TARGET_RATIO and float(report["post_p99_ms"]) <= TARGET_P99_MS,
    }
