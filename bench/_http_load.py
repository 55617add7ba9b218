"""The load client of `bench ingest_http` and `bench gateway_overhead`, run as its own process so
its CPU is not the service's.

`python -m bench._http_load URL --clients 50 --batch 100 --seconds 10 --max-requests 5000`:
a closed loop of `clients` concurrent clients, each posting a JSON array of `batch` events to
`URL/api/v1/events` and sending the next as soon as the answer is in, until `seconds` have
passed or `max-requests` were sent. The bodies are encoded before the clock starts (distinct
events, cycled), so the client spends its CPU on HTTP alone. With `--get PATH` each client
GETs `URL/PATH` instead and a 200 counts as answered. Prints `start` when the measured round
begins, then one JSON line: events/s accepted (or answers/s), requests by status, latency
percentiles, and the client's own CPU seconds.
Only 127.0.0.1 / localhost URLs are accepted.

aiohttp, in a process of its own: the bench's earlier in-process httpx client spent 2-3.5 ms of
CPU per request, more than the services it measured, and shared their cores unseen.
`drive()` runs this module from a benchmark and reads the CPU of each process meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import psutil

from bench._gateway_bench import usage
from shared.settings import REPO_ROOT

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


async def load(
    url: str, clients: int, batch: int, seconds: float, max_requests: int, get: str | None = None
) -> dict[str, object]:
    bodies = _bodies(batch, BODY_POOL) if get is None else []
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    accepted = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        def request(n: int) -> Any:
            if get is not None:
                return session.get(get)
            return session.post("/api/v1/events", data=bodies[n % BODY_POOL], headers=headers)

        # Warm-up: open the connections (and the gateway's producer, or the cached answer)
        # before the clock starts.
        async def warm(i: int) -> None:
            async with request(i) as r:
                await r.read()

        await asyncio.gather(*(warm(i) for i in range(clients)))
        # Tells the parent the measured round starts (it samples the processes' CPU now).
        print("start", flush=True)
        stop_at = time.perf_counter() + seconds
        ok = "200" if get is not None else "202"
        counted = 1 if get is not None else batch

        async def client(n: int) -> None:
            nonlocal accepted, sent
            while time.perf_counter() < stop_at and sent < max_requests:
                number = sent
                sent += 1
                started = time.perf_counter()
                try:
                    async with request(number) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if status == ok:
                    accepted += counted

        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    rate_key = "answers_per_s" if get is not None else "events_per_s"
    return {
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "statuses": statuses,
        "events_accepted" if get is None else "answers": accepted,
        rate_key: round(accepted / elapsed, 1),
        "post_p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "post_p95_ms": round(_percentile(latencies, 0.95) * 1000, 1),
        "post_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "client_cpu_s": round(cpu, 2),
    }


def drive(
    url: str,
    *,
    clients: int,
    seconds: float,
    max_requests: int,
    watch: dict[str, list[psutil.Process]],
    batch: int = 100,
    get: str | None = None,
    cpus: set[int] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Run this module as a load-client process (on `cpus` if given) and return its report, and
    per watched process group (plus the client itself) the share of one core it used and the
    share it spent waiting for one, over the measured round."""
    command = [
        sys.executable,
        "-m",
        "bench._http_load",
        url,
        f"--clients={clients}",
        f"--batch={batch}",
        f"--seconds={seconds}",
        f"--max-requests={max_requests}",
    ]
    if get is not None:
        command.append(f"--get={get}")
    # The command is this interpreter and fixed arguments: nothing untrusted reaches it.
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as proc:  # noqa: S603
        client = psutil.Process(proc.pid)
        if cpus is not None:
            client.cpu_affinity(sorted(cpus))
        groups = {**watch, "load_client": [client]}
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "start":
                raise RuntimeError("the load client did not start")
            before = {name: usage(procs) for name, procs in groups.items()}
            started = time.perf_counter()
            line = proc.stdout.readline()
            elapsed = time.perf_counter() - started
            after = {name: usage(procs) for name, procs in groups.items()}
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"the load client failed with exit code {proc.returncode}")
    per_process = {
        name: {
            "cpu_cores": round((after[name][0] - before[name][0]) / elapsed, 2),
            "runnable_waiting_cores": round((after[name][1] - before[name][1]) / elapsed, 2),
        }
        for name in groups
    }
    return json.loads(line), per_process


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._http_load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--get", help="GET this path instead of posting events")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in {"127.0.0.1", "localhost"}:
        parser.error("the load client only sends to 127.0.0.1 or localhost")
    if not (0 < args.seconds <= 120 and 0 < args.max_requests <= 1_000_000):
        parser.error("--seconds must be in (0, 120] and --max-requests in (0, 1000000]")
    if args.get is not None and not args.get.startswith("/"):
        parser.error("--get takes a path starting with /")
    result = asyncio.run(load(args.url, args.clients, args.batch, args.seconds, args.max_requests, args.get))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
