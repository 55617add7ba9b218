"""The gateway's one shared HTTP client towards the upstream services: an aiohttp `ClientSession`.

The proxy, the breaker board and the performance dashboard all use it, so the gateway keeps one
connection pool per upstream. aiohttp directly, without httpx on top: in `bench
gateway_overhead` the httpx layer (request building, header models, cookie extraction, the
response stream adapter) was about a third of the gateway's CPU per proxied request.

The session never decompresses (the proxy relays bytes as they came), keeps no cookies, and
sends none of aiohttp's default headers (`User-Agent`, `Accept`, `Accept-Encoding`,
`Content-Type`): the upstream sees what the client sent. Every call passes its own timeout.
When tracing is on, every call gets a client span and carries its `traceparent`
(OpenTelemetry's aiohttp client instrumentation).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson

from services.gateway.settings import GatewaySettings
from shared.tracing import tracing_active

# aiohttp adds these unless told not to; a proxy must not invent them.
SKIP_AUTO_HEADERS: frozenset[str] = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


def create_upstream_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The shared session; call it inside the running loop (aiohttp binds the session to it)."""
    connector = aiohttp.TCPConnector(
        limit=settings.proxy_max_connections,
        limit_per_host=settings.proxy_max_connections,
        keepalive_timeout=30,
    )
    trace_configs: list[aiohttp.TraceConfig] = []
    if tracing_active():
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        trace_configs.append(create_trace_config())
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        trace_configs=trace_configs,
        # Each call sets its own; this is the bound for a call that forgets.
        timeout=aiohttp.ClientTimeout(total=settings.proxy_timeout_s, sock_connect=2.0),
        raise_for_status=False,
    )


def timeout(seconds: float, *, connect: float | None = None) -> aiohttp.ClientTimeout:
    """A whole-call timeout (connection, request and answer) with a shorter bound on connecting."""
    return aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, connect or seconds))


class UpstreamStatusError(Exception):
    """An upstream answered with an error status where a good answer was needed."""

    def __init__(self, status: int, path: str) -> None:
        super().__init__(f"HTTP {status} from {path}")
        self.status_code = status
        self.path = path


async def get_body(
    session: aiohttp.ClientSession, url: str, timeout_s: float, *, accept_status: Iterable[int] = (200,)
) -> bytes:
    """GET `url` and return its body; another status raises :class:`UpstreamStatusError`;
    transport errors raise `aiohttp.ClientError` or `TimeoutError`."""
    async with session.get(url, timeout=timeout(timeout_s)) as response:
        if response.status not in accept_status:
            raise UpstreamStatusError(response.status, response.url.path)
        return await response.read()


async def get_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    """GET `url` and decode its JSON body (see :func:`get_body` for the errors; bad JSON raises
    `ValueError`)."""
    return orjson.loads(await get_body(session, url, timeout_s))
