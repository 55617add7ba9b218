"""Reverse proxy from the gateway to the fleet's services, by the route table, through breakers.

Each route's upstream sits behind its circuit breaker. When the breaker is open (or the
upstream cannot be reached) a GET with a recent good answer gets that answer marked
`X-Cache: stale`; anything else gets a 503 JSON envelope with `Retry-After`. Both come from
memory without touching the network, so they take well under 10 ms.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from opentelemetry import propagate
from prometheus_client import Counter
from starlette.responses import Response, StreamingResponse

from services.gateway.routes_table import ResolvedRoute
from services.gateway.stale_cache import StaleCache
from shared.breaker import BreakerRegistry, CircuitBreakerOpen
from shared.errors import error_response
from shared.request_context import current_request_id

PROXY_REQUESTS = Counter(
    "gateway_proxy_requests_total",
    "Proxied requests by route prefix and outcome (forwarded, stale, rejected, unavailable, timeout)",
    ["route", "outcome"],
)

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# RFC 9110 section 7.6.1: connection-specific headers stay on their hop. `host` is set by the
# client for the upstream, `x-request-id` and `x-forwarded-*` are rewritten below.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | {
    b"host",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
# The gateway's server adds its own `date` and `server`, and its middleware the X-Request-ID:
# the upstream's would appear twice.
_ANSWER_DROP = frozenset({b"date", b"server", b"x-request-id"})
# Replaced on stale answers.
_FRESHNESS = frozenset({b"x-cache", b"age"})
# Answers up to this size are read whole (cheaper than streaming, and cacheable); larger ones
# and those of unknown length stream through chunk by chunk.
BUFFER_LIMIT_BYTES = 256 * 1024
STALE = (b"x-cache", b"stale")


def _connection_listed(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Headers named in `Connection:` are hop-by-hop too."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def forward_headers(request: Request) -> list[tuple[bytes, bytes]]:
    raw: list[tuple[bytes, bytes]] = request.scope["headers"]
    drop = _REQUEST_DROP | _connection_listed(raw)
    headers = [(name, value) for name, value in raw if name not in drop]
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers.append((b"x-forwarded-for", (f"{prior}, {client}" if prior else client).encode("latin-1")))
    headers.append(
        (b"x-forwarded-proto", request.headers.get("x-forwarded-proto", request.url.scheme).encode())
    )
    headers.append(
        (
            b"x-forwarded-host",
            request.headers.get("x-forwarded-host", request.headers.get("host", "")).encode("latin-1"),
        )
    )
    request_id = current_request_id()
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    # Trace context: when this request is traced, the upstream call becomes a child of the
    # gateway's span; otherwise the caller's traceparent passes through untouched.
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if carrier:
        replaced = {name.encode() for name in carrier}
        headers = [(name, value) for name, value in headers if name not in replaced]
        headers.extend((name.encode(), value.encode("latin-1")) for name, value in carrier.items())
    return headers


def _answer_headers(upstream: httpx.Response, *, keep_length: bool) -> list[tuple[bytes, bytes]]:
    raw = [(name.lower(), value) for name, value in upstream.headers.raw]
    drop = _HOP_BY_HOP | _connection_listed(raw) | _ANSWER_DROP
    if not keep_length:
        drop = drop | {b"content-length"}
    return [(name, value) for name, value in raw if name not in drop]


def _cacheable(request: Request, upstream: httpx.Response) -> bool:
    if upstream.status_code != 200:
        return False
    control = upstream.headers.get("cache-control", "").lower()
    if "no-store" in control or "private" in control:
        return False
    return "authorization" not in request.headers and "cookie" not in request.headers


class Proxy:
    def __init__(self, client: httpx.AsyncClient, breakers: BreakerRegistry, stale: StaleCache) -> None:
        self.client = client
        self.breakers = breakers
        self.stale = stale

    async def forward(self, request: Request, target: ResolvedRoute) -> Response:
        route = target.route
        breaker = self.breakers.get(route.breaker)
        is_get = request.method == "GET"
        cache_key = self._cache_key(request) if is_get and route.stale_for > 0 else None
        try:
            permit = breaker.acquire()
        except CircuitBreakerOpen as exc:
            return self._unavailable(
                route.prefix,
                cache_key,
                route.stale_for,
                503,
                "rejected",
                f"{route.upstream.removesuffix('_url')} is unavailable "
                f"(circuit breaker {exc.name!r} is {exc.state})",
                exc.retry_after,
                {"breaker": exc.name, "state": exc.state},
            )
        scope = request.scope
        url = target.base_url + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        try:
            upstream_request = self.client.build_request(
                request.method,
                url,
                headers=forward_headers(request),
                content=request.stream() if has_body else None,
                timeout=httpx.Timeout(route.timeout, connect=min(route.timeout, 3.0)),
            )
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.ConnectTimeout as exc:
            # Also what the aiohttp transport raises for a refused connection.
            permit.record_exception(exc)
            return self._unavailable(
                route.prefix,
                cache_key,
                route.stale_for,
                503,
                "unavailable",
                f"{route.upstream.removesuffix('_url')} is unreachable",
                breaker.retry_after or 1.0,
                None,
            )
        except httpx.TimeoutException as exc:
            permit.record_exception(exc)
            return self._unavailable(
                route.prefix,
                cache_key,
                route.stale_for,
                504,
                "timeout",
                f"{route.upstream.removesuffix('_url')} did not answer within {route.timeout:g}s",
                1.0,
                None,
            )
        except httpx.TransportError as exc:
            permit.record_exception(exc)
            return self._unavailable(
                route.prefix,
                cache_key,
                route.stale_for,
                503,
                "unavailable",
                f"{route.upstream.removesuffix('_url')} is unreachable: {type(exc).__name__}",
                breaker.retry_after or 1.0,
                None,
            )
        except BaseException:
            permit.release()
            raise
        permit.record_result(upstream)
        PROXY_REQUESTS.labels(route=route.prefix, outcome="forwarded").inc()
        length = upstream.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT_BYTES:
            try:
                body = b"".join([chunk async for chunk in upstream.aiter_raw()])
            except httpx.HTTPError as exc:
                return self._unavailable(
                    route.prefix,
                    cache_key,
                    route.stale_for,
                    502,
                    "unavailable",
                    f"the upstream answer broke off: {type(exc).__name__}",
                    1.0,
                    None,
                )
            finally:
                await upstream.aclose()
            headers = _answer_headers(upstream, keep_length=False)
            if cache_key is not None and _cacheable(request, upstream):
                self.stale.put(cache_key, upstream.status_code, headers, body)
            response = Response(body, status_code=upstream.status_code)
            response.raw_headers.extend(headers)
            return response
        streaming = StreamingResponse(_relay(upstream), status_code=upstream.status_code)
        streaming.raw_headers = _answer_headers(upstream, keep_length=True)
        return streaming

    @staticmethod
    def _cache_key(request: Request) -> str:
        scope = request.scope
        return "{}?{}|{}|{}".format(
            scope["path"],
            scope["query_string"].decode("latin-1"),
            request.headers.get("accept", ""),
            request.headers.get("accept-encoding", ""),
        )

    def _unavailable(
        self,
        prefix: str,
        cache_key: str | None,
        stale_for: float,
        status: int,
        outcome: str,
        message: str,
        retry_after: float,
        details: dict[str, Any] | None,
    ) -> Response:
        if cache_key is not None:
            cached = self.stale.get(cache_key, stale_for)
            if cached is not None:
                PROXY_REQUESTS.labels(route=prefix, outcome="stale").inc()
                response = Response(cached.body, status_code=cached.status_code)
                response.raw_headers.extend(h for h in cached.headers if h[0] not in _FRESHNESS)
                response.raw_headers.append(STALE)
                response.raw_headers.append((b"age", str(int(cached.age(time.monotonic()))).encode()))
                return response
        PROXY_REQUESTS.labels(route=prefix, outcome=outcome).inc()
        retry = str(max(1, math.ceil(retry_after)))
        return error_response(
            status,
            message,
            code="upstream_unavailable" if status != 504 else "upstream_timeout",
            details={**(details or {}), "retry_after": float(retry)},
            headers={"Retry-After": retry},
        )


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


def build_router(routes: list[ResolvedRoute]) -> APIRouter:
    """Catch-all routes per prefix; the handler finds its Proxy on `app.state.proxy`.

    Each method is its own route so that every operation of the OpenAPI document has its own id.
    """
    router = APIRouter(tags=["proxy"])
    for target in routes:

        def make_handlers(bound: ResolvedRoute) -> tuple[Any, Any]:
            async def forward_prefix(request: Request) -> Response:
                proxy: Proxy = request.app.state.proxy
                return await proxy.forward(request, bound)

            async def forward(
                request: Request,
                path: Annotated[str, PathParam(description="the rest of the path, sent upstream as is")],
            ) -> Response:
                return await forward_prefix(request)

            return forward_prefix, forward

        prefix_handler, path_handler = make_handlers(target)
        upstream = target.route.upstream.removesuffix("_url")
        summary = f"Proxy to {upstream} (breaker {target.route.breaker})"
        prefix = target.route.prefix
        slug = "proxy_" + prefix.strip("/").replace("/", "_")
        router.add_api_route(prefix, prefix_handler, methods=METHODS, include_in_schema=False)
        for method in METHODS:
            router.add_api_route(
                prefix + "/{path:path}",
                path_handler,
                methods=[method],
                summary=summary,
                operation_id=f"{slug}_{method.lower()}",
                response_class=Response,
                responses={200: {"description": f"the answer of {upstream}, passed through"}},
            )
    return router
