"""Two real analytics processes sharing one Redis: one computation for a stampede on a cold key,
and no failed request while Redis stops and comes back."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from shared.event_store import store_events
from shared.events import AccessEvent
from tests.integration.analytics.planted import planted_events
from tools.dev.fleet import ServiceProcess
from tools.dev.servers import start_redis_server

pytestmark = pytest.mark.e2e

BREAKERS = """
defaults:
  failure_threshold: 3
  wait_duration_in_open_state: 1s
  permitted_calls_in_half_open_state: 1
breakers:
  redis:
    failure_threshold: 3
    minimum_number_of_calls: 3
    wait_duration_in_open_state: 1s
    permitted_calls_in_half_open_state: 1
"""


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await store_events(conn, [AccessEvent.model_validate(e) for e in planted_events()])
    finally:
        await conn.close()


def _counter(metrics: str, name: str, labels: str) -> float:
    pattern = re.compile(rf"^{name}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", re.MULTILINE)
    match = pattern.search(metrics)
    return float(match.group(1)) if match else 0.0


def _start_pair(start_service: Callable[..., ServiceProcess], env: dict[str, str]) -> list[ServiceProcess]:
    return [start_service("services.analytics", env, wait_ready=True, timeout_s=60) for _ in range(2)]


def _env(database_url: str, redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    config = tmp_path / "breakers.yaml"
    config.write_text(BREAKERS)
    return {
        "DATABASE_URL": database_url,
        "CACHE_TYPE": "intelligent",
        "CACHE_HOST": host,
        "CACHE_PORT": port,
        "CACHE_KEY_PREFIX": prefix,
        "CACHE_L3_PATH": str(tmp_path / "l3"),
        "ANALYTICS_MAX_WORKERS": "1",
        "CIRCUIT_BREAKER_CONFIG": str(config),
        "CACHE_WARM_ON_START": "false",
    }


async def test_a_stampede_over_two_processes_computes_once(
    database_url: str, redis_prefix: str, tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    await _seed(database_url)
    process, redis_url = start_redis_server()
    try:
        services = _start_pair(start_service, _env(database_url, redis_url, redis_prefix, tmp_path))
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:
            answers = await asyncio.gather(
                *(http.get(f"{services[i % 2].url}/api/v1/analytics/patterns") for i in range(200))
            )
            assert [a.status_code for a in answers] == [200] * 200
            assert len({a.text for a in answers}) == 1
            metrics = [(await http.get(s.url + "/metrics")).text for s in services]
        computations = sum(_counter(m, "cache_computations_total", 'cache="patterns"') for m in metrics)
        assert computations == 1
        # The process that did not compute got the value from Redis.
        assert sum(_counter(m, "cache_hits_total", 'cache="patterns",tier="l2"') for m in metrics) >= 1
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_redis_stopping_mid_run_fails_no_request_and_l2_returns(
    database_url: str, redis_prefix: str, tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    await _seed(database_url)
    process, redis_url = start_redis_server()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    try:
        services = _start_pair(start_service, _env(database_url, redis_url, redis_prefix, tmp_path))
        statuses: list[int] = []
        stop = asyncio.Event()

        async def load(http: httpx.AsyncClient, n: int) -> None:
            i = 0
            while not stop.is_set():
                facility = ["hq", "annex", None][i % 3]
                params = {"facility_id": facility} if facility else {}
                answer = await http.get(
                    f"{services[(n + i) % 2].url}/api/v1/analytics/summary", params=params
                )
                statuses.append(answer.status_code)
                i += 1

        async with httpx.AsyncClient(timeout=30) as http:
            workers = [asyncio.create_task(load(http, n)) for n in range(8)]
            await asyncio.sleep(1.0)
            process.terminate()  # Redis goes away in the middle of the load
            process.wait(timeout=10)
            await asyncio.sleep(3.0)
            process, _ = start_redis_server(port=port)
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*workers)
            assert len(statuses) > 50
            assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}

            # Back to normal: a new analysis is stored in Redis again and served from it.
            for service in services:
                await http.get(service.url + "/api/v1/analytics/patterns", params={"facility_id": "annex"})
            client = redis.Redis.from_url(redis_url)
            deadline = time.monotonic() + 10
            keys: list[bytes] = []
            while time.monotonic() < deadline and not keys:
                keys = list(client.scan_iter(match=f"{redis_prefix}:cache:patterns:*"))
                if not keys:
                    await asyncio.sleep(0.5)
                    await http.get(
                        services[0].url + "/api/v1/analytics/patterns", params={"facility_id": "hq"}
                    )
            client.close()
            assert keys
            report = (await http.get(services[1].url + "/api/v1/cache/report")).json()
            assert report["tiers"]["l2"]["available"] is True
    finally:
        process.terminate()
        process.wait(timeout=10)
