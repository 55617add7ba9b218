"""A real gateway process under concurrent maximum ingest requests stays inside its pod limit.

Before the memory budget one 15 MiB request grew the gateway by about 266 MiB, so two at once
passed the 512 Mi limit of the Kubernetes manifests. The peak resident size (VmHWM) is read
from /proc after eight concurrent requests of the largest body in the costliest shape measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from services.gateway.settings import GatewaySettings
from tests.factories import event_dict
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = pytest.mark.e2e

POD_LIMIT_MIB = 512


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _largest_body(limit: int) -> bytes:
    """As many events as fit in `limit` bytes, each with thousands of empty objects: the shape
    that costs the most memory per body byte when parsed."""
    event = event_dict(x=[{}] * 3000)
    one = len(orjson.dumps(event)) + 1
    return orjson.dumps([event_dict(x=[{}] * 3000) for _ in range(limit // one - 1)])


def test_concurrent_maximum_requests_stay_under_the_pod_limit(
    kafka_bootstrap: str, topic_name: str, start_service: Callable[..., ServiceProcess]
) -> None:
    env = {
        **service_env("postgresql://unused", kafka_bootstrap, topic_name),
        "GATEWAY_RUN_EVENT_PROCESSOR": "false",  # as in the Kubernetes manifests
        "INGEST_ADMISSION_TIMEOUT": "30",
    }
    gateway = start_service("services.gateway", env, wait_ready=True, timeout_s=60)
    assert gateway.proc is not None
    # Warm up (producer started, topic created) so the baseline includes it.
    assert httpx.post(gateway.url + "/api/v1/events", json=event_dict(), timeout=30).status_code == 202
    baseline = _peak_rss_mib(gateway.proc.pid)
    body = _largest_body(GatewaySettings().max_request_bytes)  # the default maximum

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:

            async def one() -> int:
                answer = await client.post(
                    "/api/v1/events", content=body, headers={"content-type": "application/json"}
                )
                return answer.status_code

            return await asyncio.gather(*(one() for _ in range(8)))

    started = time.monotonic()
    statuses = asyncio.run(post_all())
    elapsed = time.monotonic() - started
    peak = _peak_rss_mib(gateway.proc.pid)
    size = len(body) / 2**20
    print(f"baseline {baseline:.0f} MiB, peak {peak:.0f} MiB, 8 x {size:.1f} MiB in {elapsed:.1f}s")
    assert statuses.count(202) == 8, statuses  # queued for the budget, none refused
    assert peak < POD_LIMIT_MIB, f"peak {peak:.0f} MiB from a baseline of {baseline:.0f} MiB"
