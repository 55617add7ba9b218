"""The proxy's route table cannot be escaped: hostile paths are refused with 400 before any
upstream sees them, and the upstream receives exactly the path that was matched.

The client writes raw HTTP/1.1 on a socket (an HTTP client library would resolve dot segments
itself); the upstream is a real server that records the raw request target of every request.
HTTP clients rewrite such paths after the match (yarl, under aiohttp, decodes `%2e%2e` and
resolves it; httpx resolves literal dot segments), so the proxy refuses them first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.integration.gateway.conftest import serving, write_breakers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class RecordingUpstream:
    """Answers 200 to anything and records the raw path it was asked for."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                phase = (await receive())["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{phase}.complete"})
                if phase == "shutdown":
                    return
        self.seen.append(scope["raw_path"])
        body = orjson.dumps({"raw_path": scope["raw_path"].decode("latin-1")})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def raw_request(
    port: int, target: bytes, method: bytes = b"GET", headers: bytes = b""
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            method + b" " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n" + headers + b"\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def settings(tmp_path: Path, upstream_url: str, **extra: object) -> GatewaySettings:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n"
        "  - {prefix: /api/v1/analytics, upstream: analytics_url, breaker: analytics, timeout: 5}\n"
        "  - {prefix: /api/v1/uploads, upstream: analytics_url, breaker: analytics, timeout: 5,"
        " require_api_key: [POST]}\n"
    )
    return GatewaySettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        GATEWAY_RUN_EVENT_PROCESSOR=False,
        TRACING_ENABLED=False,
        ANALYTICS_URL=upstream_url,
        CIRCUIT_BREAKER_CONFIG=write_breakers(tmp_path),
        GATEWAY_ROUTES_CONFIG=routes,
        **extra,
    )


HOSTILE = [
    b"/api/v1/analytics/../../../admin/tuning",
    b"/api/v1/analytics/%2e%2e/%2e%2e/%2e%2e/admin/tuning",
    b"/api/v1/analytics/%2E%2E/%2E%2E/%2E%2E/admin/tuning",
    b"/api/v1/analytics/.%2e/.%2e/.%2e/admin/tuning",
    b"/api/v1/analytics/..%2f..%2f..%2fadmin/tuning",
    b"/api/v1/analytics/..%5c..%5c..%5cadmin/tuning",
    b"/api/v1/analytics/..\\..\\..\\admin/tuning",
    b"/api/v1/analytics/./summary",
    b"/api/v1/analytics/summary%00.json",
    b"/api/v1/analytics/%ff",
    b"/api/v1/uploads/../analytics/summary",
]


async def test_hostile_paths_are_400_and_never_reach_the_upstream(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    async with serving(upstream) as up, serving(create_app(settings(tmp_path, up.url))) as gw:
        for target in HOSTILE:
            status, body = await raw_request(gw.port, target)
            assert status == 400, (target, body)
            assert orjson.loads(body)["error"]["code"] == "unsafe_path", target
        assert upstream.seen == []


async def test_the_upstream_sees_exactly_the_matched_path(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    cases = {
        b"/api/v1/analytics/summary?start=2025-01-01": b"/api/v1/analytics/summary",
        b"/api/v1/analytics/caf%c3%a9": b"/api/v1/analytics/caf%C3%A9",
        b"/api/v1/analytics/a%7cb|c": b"/api/v1/analytics/a%7Cb%7Cc",
        b"/api/v1/analytics/100%25": b"/api/v1/analytics/100%25",
        b"/api/v1/analytics/...x/..y": b"/api/v1/analytics/...x/..y",
    }
    async with serving(upstream) as up, serving(create_app(settings(tmp_path, up.url))) as gw:
        for target, expected in cases.items():
            status, body = await raw_request(gw.port, target)
            assert status == 200, (target, body)
            assert upstream.seen[-1] == expected, target
            assert orjson.loads(body)["raw_path"] == expected.decode()
    assert all(raw.startswith(b"/api/v1/analytics/") for raw in upstream.seen)


async def test_keyed_writes_are_authenticated_at_the_gateway(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    async with serving(upstream) as up:
        config = settings(tmp_path, up.url, API_KEYS="k1")
        async with serving(create_app(config)) as gw:
            status, body = await raw_request(gw.port, b"/api/v1/uploads", b"POST")
            assert status == 401
            assert orjson.loads(body)["error"]["code"] == "missing_api_key"
            status, _ = await raw_request(gw.port, b"/api/v1/uploads", b"POST", b"X-API-Key: k2\r\n")
            assert status == 403
            assert upstream.seen == []
            status, _ = await raw_request(gw.port, b"/api/v1/uploads", b"POST", b"X-API-Key: k1\r\n")
            assert status == 200
            # Reads of the same route stay open.
            status, _ = await raw_request(gw.port, b"/api/v1/analytics/summary")
            assert status == 200
    assert upstream.seen == [b"/api/v1/uploads", b"/api/v1/analytics/summary"]
