"""The load client of `bench ingest_http`, run as its own process so its CPU is not the gateway's.

`python -m bench._http_load URL --clients 50 --batch 100 --seconds 10 --max-requests 5000`:
a closed loop of `clients` concurrent clients, each posting a JSON array of `batch` events to
`URL/api/v1/events` and sending the next as soon as the answer is in, until `seconds` have
passed or `max-requests` were sent. The bodies are encoded before the clock starts (distinct
events, cycled), so the client spends its CPU on HTTP alone. Prints `start` when the measured
round begins, then one JSON line: events/s accepted, requests by status, POST latency
percentiles, and the client's own CPU seconds.
Only 127.0.0.1 / localhost URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import orjson

BODY_POOL = 256


def _bodies(batch: int, count: int) -> list[bytes]:
    now = datetime.now(UTC).isoformat()
    bodies = []
    for b in range(count):
        bodies.append(
            orjson.dumps(
                [
                    {
                        "event_id": str(uuid.uuid4()),
                        "timestamp": now,
                        "person_id": f"p{(b * batch + i) % 5000}",
                        "door_id": f"d{(b * 7 + i) % 200}",
                        "badge_id": f"b{(b * batch + i) % 5000}",
                        "access_result": "Granted" if i % 10 else "Denied",
                        "badge_status": "Valid",
                        "facility_id": f"f{i % 3}",
                    }
                    for i in range(batch)
                ]
            )
        )
    return bodies


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def load(url: str, clients: int, batch: int, seconds: float, max_requests: int) -> dict[str, object]:
    bodies = _bodies(batch, BODY_POOL)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    accepted = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        # Warm-up: open the connections and the gateway's producer before the clock starts.
        async def warm(i: int) -> None:
            async with session.post("/api/v1/events", data=bodies[i % BODY_POOL], headers=headers) as r:
                await r.read()

        await asyncio.gather(*(warm(i) for i in range(clients)))
        # Tells the parent the measured round starts (it samples the processes' CPU now).
        print("start", flush=True)
        stop_at = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal accepted, sent
            while time.perf_counter() < stop_at and sent < max_requests:
                body = bodies[sent % BODY_POOL]
                sent += 1
                started = time.perf_counter()
                try:
                    async with session.post("/api/v1/events", data=body, headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if status == "202":
                    accepted += batch

        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "statuses": statuses,
        "events_accepted": accepted,
        "events_per_s": round(accepted / elapsed, 1),
        "post_p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "post_p95_ms": round(_percentile(latencies, 0.95) * 1000, 1),
        "post_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "client_cpu_s": round(cpu, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._http_load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in {"127.0.0.1", "localhost"}:
        parser.error("the load client only sends to 127.0.0.1 or localhost")
    if not (0 < args.seconds <= 120 and 0 < args.max_requests <= 1_000_000):
        parser.error("--seconds must be in (0, 120] and --max-requests in (0, 1000000]")
    result = asyncio.run(load(args.url, args.clients, args.batch, args.seconds, args.max_requests))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
