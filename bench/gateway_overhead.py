"""Gateway overhead: requests/s to the same analytics endpoint through the gateway and directly.

One analytics process and one gateway process (its event processor off), both real. A closed
loop of concurrent clients asks `GET /api/v1/analytics/summary` (answered from analytics' own
cache, so the proxy's share of the work is as large as it gets) for a fixed time, directly and
through the gateway, alternating twice so drift hits both alike. Target: through the gateway
>= 80 % of direct. Each round also reports the CPU microseconds per answered request of each
process (analytics, gateway, and this process as the load client) and how long each sat
runnable waiting for a core: on a saturated machine the ratio is the CPU cost of the direct
path over that of the proxied one, so these say where the difference goes.

Then analytics is stopped and the answers the gateway gives while its breaker is open (stale
copies, or 503 with Retry-After) are timed one by one: target < 10 ms each.
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

import httpx
import psutil
import yaml

from bench._gateway_bench import cpu_count, fresh_database, process_tree, servers, unique_name, usage
from tools.dev.fleet import ServiceProcess

PATH = "/api/v1/analytics/summary"
CONCURRENCY = 32
TARGET_RATIO = 0.8
TARGET_OPEN_MS = 10.0


async def _load(url: str, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        for _ in range(20):  # warm the connections and the caches
            (await client.get(PATH)).raise_for_status()
        done = 0
        errors = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                try:
                    response = await client.get(PATH)
                except httpx.TransportError:
                    errors += 1  # counted and reported, not fatal: the rate is of 200s only
                    continue
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return {"requests_per_s": done / elapsed, "errors": errors, "requests": done}


def _measured(url: str, seconds: float, watch: dict[str, list[psutil.Process]]) -> dict[str, Any]:
    """One load round, with the CPU microseconds per answered request of each watched process
    (and of this process, the load client) and the cores' worth of time each sat waiting for a
    CPU: where the time goes, and whether the machine's other work took it."""
    groups = {**watch, "load_client": [psutil.Process()]}
    before = {name: usage(procs) for name, procs in groups.items()}
    started = time.perf_counter()
    result = asyncio.run(_load(url, seconds))
    elapsed = time.perf_counter() - started
    after = {name: usage(procs) for name, procs in groups.items()}
    requests = max(1, result["requests"])
    result["cpu_us_per_request"] = {
        name: round((after[name][0] - before[name][0]) / requests * 1e6) for name in groups
    }
    result["runnable_waiting_cores"] = {
        name: round((after[name][1] - before[name][1]) / elapsed, 2) for name in groups
    }
    return result


async def _open_breaker_latencies(url: str, count: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(10):  # the refused connections that open the breaker
            await client.get(PATH)
        state = (await client.get("/breaker")).json()["analytics"]["state"]
        timings: dict[str, list[float]] = {"stale": [], "unavailable": []}
        for i in range(count):
            path = PATH if i % 2 == 0 else "/api/v1/analytics/anomalies?never=cached"
            started = time.perf_counter()
            response = await client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            kind = "stale" if response.headers.get("x-cache") == "stale" else "unavailable"
            if kind == "unavailable" and response.status_code != 503:
                raise RuntimeError(f"expected 503 while analytics is down, got {response.status_code}")
            timings[kind].append(elapsed)
    out: dict[str, Any] = {"breaker_state": state}
    for kind, values in timings.items():
        values.sort()
        if values:
            out[f"{kind}_p50_ms"] = round(values[len(values) // 2], 2)
            out[f"{kind}_p99_ms"] = round(values[int(len(values) * 0.99)], 2)
    return out


@contextlib.contextmanager
def _fleet(dsn: str, bootstrap: str) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with TemporaryDirectory(prefix="bench-gateway-") as tmp:
        breakers = Path(tmp) / "breakers.yaml"
        breakers.write_text(
            yaml.safe_dump(
                {"breakers": {"analytics": {"failure_threshold": 5, "wait_duration_in_open_state": 60}}}
            )
        )
        env = {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ACCESS_EVENTS_TOPIC": unique_name("bench-overhead"),
            "LOG_LEVEL": "WARNING",
            "CIRCUIT_BREAKER_CONFIG": str(breakers),
        }
        analytics = ServiceProcess("services.analytics", env, Path(tmp)).start(wait_ready=True, timeout_s=120)
        gateway = ServiceProcess(
            "services.gateway",
            {**env, "ANALYTICS_URL": analytics.url, "GATEWAY_RUN_EVENT_PROCESSOR": "false"},
            Path(tmp),
        )
        try:
            gateway.start(timeout_s=120)
            yield analytics, gateway
        finally:
            gateway.stop()
            analytics.stop()


def run(quick: bool) -> dict[str, Any]:
    seconds = 4.0 if quick else 15.0
    with (
        servers() as (pg_server, bootstrap),
        fresh_database(pg_server) as dsn,
        _fleet(dsn, bootstrap) as (
            analytics,
            gateway,
        ),
    ):
        assert analytics.proc is not None
        assert gateway.proc is not None
        watch = {"analytics": process_tree(analytics.proc.pid), "gateway": process_tree(gateway.proc.pid)}
        load_avg = os.getloadavg()[0]
        direct: list[float] = []
        via: list[float] = []
        rounds: dict[str, dict[str, Any]] = {}
        errors = 0
        for _ in range(2):
            rounds["direct"] = _measured(analytics.url, seconds, watch)
            rounds["via_gateway"] = _measured(gateway.url, seconds, watch)
            errors += rounds["direct"]["errors"] + rounds["via_gateway"]["errors"]
            direct.append(rounds["direct"]["requests_per_s"])
            via.append(rounds["via_gateway"]["requests_per_s"])
        analytics.stop()
        open_answers = asyncio.run(_open_breaker_latencies(gateway.url, 400))
    direct_rps = sum(direct) / len(direct)
    via_rps = sum(via) / len(via)
    ratio = via_rps / direct_rps if direct_rps else 0.0
    worst_open = max(v for k, v in open_answers.items() if k.endswith("_p99_ms"))
    return {
        "endpoint": PATH,
        "concurrency": CONCURRENCY,
        "seconds_per_round": seconds,
        "cpus": cpu_count(),
        "load_average_1m": round(load_avg, 2),
        "direct_requests_per_s": round(direct_rps),
        "via_gateway_requests_per_s": round(via_rps),
        "ratio": round(ratio, 3),
        "errors": errors,
        # The last round of each kind: CPU per request of each process, and its wait for a CPU.
        "last_rounds": {
            kind: {k: v for k, v in r.items() if k in ("cpu_us_per_request", "runnable_waiting_cores")}
            for kind, r in rounds.items()
        },
        "target_ratio": TARGET_RATIO,
        "open_breaker": open_answers,
        "target_open_breaker_ms": TARGET_OPEN_MS,
        "meets_target": ratio >= TARGET_RATIO and worst_open < TARGET_OPEN_MS,
    }
