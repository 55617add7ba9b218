"""The gateway's one shared HTTP client towards the upstream services.

An `httpx.AsyncClient` either way; its transport is aiohttp's connection pool by default
(`PROXY_HTTP_TRANSPORT=aiohttp`, through httpx-aiohttp) because httpcore's pool re-checks every
pooled connection for every request, which under concurrency cost the gateway about half its
throughput; `httpcore` keeps httpx's own transport.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from services.gateway.settings import GatewaySettings
from shared.tracing import instrument_httpx_client


def create_upstream_client(settings: GatewaySettings) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.proxy_max_connections,
        max_keepalive_connections=settings.proxy_max_keepalive,
    )
    transport: httpx.AsyncBaseTransport | None = None
    if settings.proxy_http_transport == "aiohttp":
        # The session is created lazily inside the running loop (aiohttp requires one).
        def session() -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(
                limit=settings.proxy_max_connections,
                limit_per_host=settings.proxy_max_connections,
                keepalive_timeout=30,
            )
            return aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )

        transport = AiohttpTransport(client=session, limits=limits)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.proxy_timeout_s, connect=2.0),
        limits=limits,
        transport=transport,
        follow_redirects=False,
        trust_env=False,
    )
    instrument_httpx_client(client)  # client spans whatever the transport
    return client
