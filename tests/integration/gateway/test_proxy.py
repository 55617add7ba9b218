"""The gateway's proxy over real HTTP: pass-through, headers, streaming, breaker, stale answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.integration.gateway.conftest import LocalServer, serving, write_breakers, write_routes

pytestmark = pytest.mark.integration

BIG_CHUNK = b"x" * 65536
BIG_CHUNKS = 80  # 5 MiB


class Upstream:
    """A stand-in analytics: echoes what it received, streams, fails on demand."""

    def __init__(self) -> None:
        self.hits = 0
        self.status = 200
        self.gate: asyncio.Event | None = None
        self.app = Starlette(
            routes=[
                Route("/api/v1/analytics/echo", self.echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
                Route("/api/v1/analytics/big", self.big),
                Route("/api/v1/analytics/upload", self.upload, methods=["POST"]),
                Route("/api/v1/analytics/missing", self.missing),
                Route("/api/v1/analytics/slow", self.slow),
            ]
        )

    async def echo(self, request: Request) -> Response:
        self.hits += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return JSONResponse({"error": "down"}, status_code=self.status)
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": str(request.url.query),
                "headers": dict(request.headers),
                "body": body.decode(),
            },
            headers={"x-upstream": "yes", "connection": "keep-alive, x-secret", "x-secret": "hop"},
        )

    async def big(self, request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(BIG_CHUNKS):
                yield BIG_CHUNK

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def upload(self, request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"received": size})

    async def missing(self, request: Request) -> Response:
        self.hits += 1
        return JSONResponse({"error": "no such thing"}, status_code=404)

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(3)
        return JSONResponse({})


@contextlib.asynccontextmanager
async def proxied(
    tmp_path: Path, upstream: Upstream, client_timeout: float = 5
) -> AsyncIterator[tuple[LocalServer, LocalServer, httpx.AsyncClient]]:
    """The upstream, a gateway in front of it, and a client of the gateway."""
    async with (
        serving(upstream.app) as up,
        serving(create_app(gateway_settings(tmp_path, up.url))) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=client_timeout) as client,
    ):
        yield up, gw, client


def gateway_settings(tmp_path: Path, upstream_url: str) -> GatewaySettings:
    return GatewaySettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # the proxy tests never publish
        GATEWAY_RUN_EVENT_PROCESSOR=False,
        TRACING_ENABLED=False,
        ANALYTICS_URL=upstream_url,
        CIRCUIT_BREAKER_CONFIG=write_breakers(tmp_path, analytics={"failure_threshold": 3}),
        GATEWAY_ROUTES_CONFIG=write_routes(tmp_path, "analytics_url"),
    )


async def test_method_query_body_and_headers_pass_through(tmp_path: Path) -> None:
    upstream = Upstream()
    async with proxied(tmp_path, upstream, client_timeout=5) as (up, gw, client):
        response = await client.post(
            "/api/v1/analytics/echo?a=1&b=two%20words",
            content=b'{"k": 1}',
            headers={
                "content-type": "application/json",
                "x-request-id": "req-123",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "x-custom": "kept",
                "proxy-authorization": "Basic c2VjcmV0",
                "te": "trailers",
            },
        )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/api/v1/analytics/echo"
    assert seen["query"] == "a=1&b=two%20words"
    assert seen["body"] == '{"k": 1}'
    headers = seen["headers"]
    assert headers["x-custom"] == "kept"
    assert headers["x-request-id"] == "req-123"
    assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == gw.url.removeprefix("http://")
    assert "proxy-authorization" not in headers
    assert "te" not in headers
    assert headers["host"] == up.url.removeprefix("http://")
    # Answer: upstream headers kept, hop-by-hop ones (and those named in Connection) dropped.
    assert response.headers["x-upstream"] == "yes"
    assert "x-secret" not in response.headers
    assert response.headers.get_list("x-request-id") == ["req-123"]
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("server")) == 1


async def test_head_keeps_the_upstreams_length_and_type(tmp_path: Path) -> None:
    upstream = Upstream()
    async with proxied(tmp_path, upstream) as (up, _, client):
        # A fixed answer (the echo's would differ by the forwarded headers it reports).
        direct = await client.head(f"{up.url}/api/v1/analytics/missing")
        via = await client.head("/api/v1/analytics/missing")
    assert via.status_code == direct.status_code == 404
    assert int(direct.headers["content-length"]) > 0
    assert via.headers.get_list("content-length") == [direct.headers["content-length"]]
    assert via.headers["content-type"] == direct.headers["content-type"]
    assert via.content == b""


async def test_large_bodies_stream_both_ways(tmp_path: Path) -> None:
    upstream = Upstream()
    async with proxied(tmp_path, upstream, client_timeout=10) as (_up, _gw, client):
        received = 0
        async with client.stream("GET", "/api/v1/analytics/big") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        assert received == len(BIG_CHUNK) * BIG_CHUNKS

        async def body() -> AsyncIterator[bytes]:
            for _ in range(BIG_CHUNKS):
                yield BIG_CHUNK

        upload = await client.post("/api/v1/analytics/upload", content=body())
        assert upload.json() == {"received": len(BIG_CHUNK) * BIG_CHUNKS}


async def test_4xx_does_not_open_5xx_opens_then_fast_503_and_recovery(tmp_path: Path) -> None:
    upstream = Upstream()
    async with proxied(tmp_path, upstream, client_timeout=5) as (_up, _gw, client):
        for _ in range(5):
            assert (await client.get("/api/v1/analytics/missing")).status_code == 404
        assert (await client.get("/breaker")).json()["analytics"]["state"] == "closed"

        upstream.status = 500
        for _ in range(3):
            assert (await client.post("/api/v1/analytics/echo")).status_code == 500
        breaker = (await client.get("/breaker")).json()["analytics"]
        assert breaker["state"] == "open"
        assert breaker["open"] == 1
        assert breaker["opened_at"] is not None

        hits = upstream.hits
        started = time.perf_counter()
        rejected = await client.post("/api/v1/analytics/echo")
        elapsed = time.perf_counter() - started
        assert rejected.status_code == 503
        assert rejected.json()["error"]["code"] == "upstream_unavailable"
        assert rejected.json()["error"]["details"]["breaker"] == "analytics"
        assert int(rejected.headers["retry-after"]) >= 1
        assert upstream.hits == hits  # never reached the upstream
        assert elapsed < 0.5

        upstream.status = 200
        await asyncio.sleep(0.6)  # wait_duration_in_open_state
        assert (await client.get("/api/v1/analytics/echo")).status_code == 200  # the one trial call
        breaker = (await client.get("/breaker")).json()["analytics"]
        assert breaker["state"] == "closed"
        assert (breaker["open"], breaker["half_open"], breaker["closed"]) == (1, 1, 1)


async def test_stale_answer_while_upstream_is_down(tmp_path: Path) -> None:
    upstream = Upstream()
    up = await LocalServer(upstream.app).start()
    try:
        async with (
            serving(create_app(gateway_settings(tmp_path, up.url))) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=5) as client,
        ):
            fresh = await client.get("/api/v1/analytics/echo?x=1")
            assert fresh.status_code == 200
            assert "x-cache" not in fresh.headers
            await up.stop()
            # Connection refused: stale while the breaker is still counting...
            for _ in range(3):
                stale = await client.get("/api/v1/analytics/echo?x=1")
                assert stale.status_code == 200
                assert stale.headers["x-cache"] == "stale"
                assert stale.json() == fresh.json()
            assert (await client.get("/breaker")).json()["analytics"]["state"] == "open"
            # ...and from memory once it is open; a GET never answered before gets 503.
            started = time.perf_counter()
            stale = await client.get("/api/v1/analytics/echo?x=1")
            assert time.perf_counter() - started < 0.5
            assert stale.headers["x-cache"] == "stale"
            assert int(stale.headers["age"]) >= 0
            unknown = await client.get("/api/v1/analytics/echo?x=2")
            assert unknown.status_code == 503
            assert "retry-after" in unknown.headers
            assert (await client.post("/api/v1/analytics/echo")).status_code == 503
    finally:
        await up.stop()


async def test_upstream_timeout_is_504_and_counts(tmp_path: Path) -> None:
    upstream = Upstream()
    async with proxied(tmp_path, upstream, client_timeout=10) as (_up, _gw, client):
        started = time.perf_counter()
        response = await client.get("/api/v1/analytics/slow")
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        assert time.perf_counter() - started < 2.5  # route timeout is 1 s, the upstream takes 3 s
        snapshot = (await client.get("/breaker/analytics")).json()
        assert snapshot["calls"]["failure"] == 1
        assert (await client.get("/breaker/nope")).status_code == 404


async def test_breaker_listing_has_reference_shape(tmp_path: Path) -> None:
    upstream = Upstream()
    async with proxied(tmp_path, upstream, client_timeout=5) as (_up, _gw, client):
        breakers = (await client.get("/breaker")).json()
        reset = await client.post("/breaker/analytics/reset")
    assert {"analytics", "kafka"} <= set(breakers)
    # The services behind the gateway, each with its breakers or marked unreachable.
    services = breakers.pop("services")
    assert set(services) >= {"analytics", "optimizer", "replicator"}
    for snapshot in breakers.values():
        assert snapshot["state"] in {"closed", "open", "half_open"}
        for key in ("open", "half_open", "closed", "calls_in_window", "config"):
            assert key in snapshot
        assert "failure_rate" in snapshot
        assert "slow_call_rate" in snapshot
        assert "opened_at" in snapshot
    assert reset.status_code == 403  # no ADMIN_TOKEN: the admin action is refused


async def test_hundred_concurrent_requests_in_half_open_reach_upstream_exactly_permitted_times(
    tmp_path: Path,
) -> None:
    upstream = Upstream()
    settings = gateway_settings(tmp_path, "http://unused").model_copy(
        update={
            "circuit_breaker_config": write_breakers(
                tmp_path,
                analytics={
                    "failure_threshold": 1,
                    "wait_duration_in_open_state": 0.3,
                    "permitted_calls_in_half_open_state": 4,
                    # The trial calls are held open on purpose; on a loaded machine that can
                    # take seconds, which must not count as slow calls and reopen the breaker.
                    "slow_call_duration_threshold": 120,
                },
            ),
            # Likewise the route's timeout: a trial call held past it would be a failure.
            "routes_config": write_routes(tmp_path, "analytics_url", timeout=120),
        }
    )
    async with serving(upstream.app) as up:
        settings = settings.model_copy(update={"analytics_url": up.url})
        async with (
            serving(create_app(settings)) as gw,
            httpx.AsyncClient(
                base_url=gw.url, timeout=10, limits=httpx.Limits(max_connections=100)
            ) as client,
        ):
            upstream.status = 500
            assert (await client.get("/api/v1/analytics/echo")).status_code == 500
            assert (await client.get("/breaker/analytics")).json()["state"] == "open"
            upstream.status = 200
            upstream.hits = 0
            upstream.gate = asyncio.Event()  # the trial calls stay in flight until all 100 arrived
            await asyncio.sleep(0.35)
            calls = [asyncio.create_task(client.post("/api/v1/analytics/echo")) for _ in range(100)]
            for _ in range(6000):  # at most about a minute, however loaded the machine is
                if sum(c.done() for c in calls) == 96:
                    break
                await asyncio.sleep(0.01)
            assert upstream.hits == 4
            upstream.gate.set()
            statuses = [a.status_code for a in await asyncio.gather(*calls)]
            assert upstream.hits == 4
            assert statuses.count(200) == 4
            assert statuses.count(503) == 96
            assert (await client.get("/breaker/analytics")).json()["state"] == "closed"
