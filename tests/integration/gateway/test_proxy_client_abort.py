"""A client that breaks off its request body is the client's doing, not the upstream's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from services.gateway.app import create_app
from tests.integration.gateway.conftest import serving
from tests.integration.gateway.test_proxy import Upstream, gateway_settings

pytestmark = pytest.mark.integration


async def _abort_upload(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/analytics/upload HTTP/1.1\r\nhost: gw\r\ncontent-type: text/csv\r\n"
        b"content-length: 1000000\r\n\r\n" + b"x" * 5000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


async def test_aborted_request_bodies_never_open_the_breaker(tmp_path: Path) -> None:
    upstream = Upstream()
    async with serving(upstream.app) as up, serving(create_app(gateway_settings(tmp_path, up.url))) as gw:
        for _ in range(6):
            await _abort_upload(gw.port)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            assert (await client.get("/breaker")).json()["analytics"]["state"] == "closed"
            answer = await client.post("/api/v1/analytics/upload", content=b"y" * 1000)
            assert answer.status_code == 200
            assert answer.json() == {"received": 1000}
