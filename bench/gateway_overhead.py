"""Gateway overhead: requests/s to the same analytics endpoint through the gateway and directly.

One analytics process and one gateway process (its event processor off), both real. A load
client in a process of its own (`bench._http_load --get`, aiohttp, 32 concurrent clients) asks
`GET /api/v1/analytics/summary` (answered from analytics' own cache, so the proxy's share of the
work is as large as it gets) for a fixed time, directly and through the gateway, alternating
twice so drift hits both alike. Each round also reports the CPU microseconds per answered
request of each process (analytics, gateway, load client) and how long each sat runnable waiting
for a core.

Two layouts of the processes on the machine's cores, each measured the same way:
- `own_core` (the target's): analytics on core 0; the gateway and the load client on core 1. As
  in a deployment, where the gateway is a container of its own, the proxy has CPU that
  analytics does not use, and the ratio says what the hop costs in answers per second: its
  latency, its concurrency, its limits. The load client shares the gateway's core, which
  counts against the gateway.
- `shared_cores`: no pinning, everything (and whatever else the machine runs) competing for
  every core. Here the ratio is the CPU cost of the direct path over that of the proxied one,
  whatever the gateway does: a proxy parses and writes every request and answer once more.
Target: through the gateway >= 80 % of direct in `own_core`. With one core only, `own_core` is
not measured and the target is checked on `shared_cores`.

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

from bench._gateway_bench import cpu_count, fresh_database, pin, process_tree, servers, unique_name
from bench._http_load import drive
from tools.dev.fleet import ServiceProcess

PATH = "/api/v1/analytics/summary"
CONCURRENCY = 32
TARGET_RATIO = 0.8
TARGET_OPEN_MS = 10.0


def _measured(
    url: str, seconds: float, watch: dict[str, list[psutil.Process]], client_cpus: set[int] | None
) -> dict[str, Any]:
    """One load round: answers/s, and per process (the load client too) CPU microseconds per
    answered request and the cores' worth of time it sat waiting for a CPU."""
    report, per_process = drive(
        url,
        clients=CONCURRENCY,
        seconds=seconds,
        max_requests=10**6,
        watch=watch,
        get=PATH,
        cpus=client_cpus,
    )
    rate = float(report["answers_per_s"])
    requests = max(1.0, rate)
    return {
        "requests_per_s": rate,
        "errors": sum(n for status, n in report["statuses"].items() if status != "200"),
        "p99_ms": report["post_p99_ms"],
        "cpu_us_per_request": {
            name: round(usage["cpu_cores"] / requests * 1e6) for name, usage in per_process.items()
        },
        "runnable_waiting_cores": {
            name: usage["runnable_waiting_cores"] for name, usage in per_process.items()
        },
    }


_REPORTED = ("cpu_us_per_request", "runnable_waiting_cores", "p99_ms")


def _layout(
    analytics: ServiceProcess,
    gateway: ServiceProcess,
    seconds: float,
    placement: tuple[set[int], set[int]] | None,
) -> dict[str, Any]:
    """Direct and via-gateway rounds, twice, with analytics on `placement[0]` and the gateway and
    the load client on `placement[1]` (every core when None)."""
    assert analytics.proc is not None
    assert gateway.proc is not None
    watch = {"analytics": process_tree(analytics.proc.pid), "gateway": process_tree(gateway.proc.pid)}
    every = set(range(psutil.cpu_count() or 1))
    analytics_cpus, gateway_cpus = placement or (every, every)
    pin(watch["analytics"], analytics_cpus)
    pin(watch["gateway"], gateway_cpus)
    try:
        direct: list[float] = []
        via: list[float] = []
        rounds: dict[str, dict[str, Any]] = {}
        errors = 0
        for _ in range(2):
            rounds["direct"] = _measured(analytics.url, seconds, watch, gateway_cpus)
            rounds["via_gateway"] = _measured(gateway.url, seconds, watch, gateway_cpus)
            errors += rounds["direct"]["errors"] + rounds["via_gateway"]["errors"]
            direct.append(rounds["direct"]["requests_per_s"])
            via.append(rounds["via_gateway"]["requests_per_s"])
    finally:
        pin(watch["analytics"] + watch["gateway"], every)
    direct_rps = sum(direct) / len(direct)
    via_rps = sum(via) / len(via)
    return {
        "direct_requests_per_s": round(direct_rps),
        "via_gateway_requests_per_s": round(via_rps),
        "ratio": round(via_rps / direct_rps if direct_rps else 0.0, 3),
        "errors": errors,
        # The last round of each kind: CPU per request of each process, its wait for a CPU, p99.
        "last_rounds": {
            kind: {
                k: v for k, v in r.items() if k in ("cpu_us_per_request", "runnable_waiting_cores", "p99_ms")
            }
            for kind, r in rounds.items()
        },
    }


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
        _fleet(dsn, bootstrap) as (analytics, gateway),
    ):
        load_avg = os.getloadavg()[0]
        layouts = {"shared_cores": _layout(analytics, gateway, seconds, None)}
        if (psutil.cpu_count() or 1) >= 2:
            layouts["own_core"] = _layout(analytics, gateway, seconds, ({0}, {1}))
        analytics.stop()
        open_answers = asyncio.run(_open_breaker_latencies(gateway.url, 400))
    judged = layouts.get("own_core", layouts["shared_cores"])
    worst_open = max(v for k, v in open_answers.items() if k.endswith("_p99_ms"))
    return {
        "endpoint": PATH,
        "concurrency": CONCURRENCY,
        "seconds_per_round": seconds,
        "cpus": cpu_count(),
        "load_average_1m": round(load_avg, 2),
        "direct_requests_per_s": judged["direct_requests_per_s"],
        "via_gateway_requests_per_s": judged["via_gateway_requests_per_s"],
        "ratio": judged["ratio"],
        "ratio_shared_cores": layouts["shared_cores"]["ratio"],
        "layouts": layouts,
        "target_ratio": TARGET_RATIO,
        "open_breaker": open_answers,
        "target_open_breaker_ms": TARGET_OPEN_MS,
        "meets_target": judged["ratio"] >= TARGET_RATIO
        and judged["errors"] == 0
        and worst_open < TARGET_OPEN_MS,
    }
