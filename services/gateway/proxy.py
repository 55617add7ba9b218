"""Reverse proxy from the gateway to the fleet's services, by the route table, through breakers.

Each route's upstream sits behind its circuit breaker. When the breaker is open (or the
upstream cannot be reached) a GET with a recent good answer gets that answer marked
`X-Cache: stale`; anything else gets a 503 JSON envelope with `Retry-After`. Both come from
memory without touching the network, so they take well under 10 ms.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.routing import iter_route_contexts
from opentelemetry import propagate
from prometheus_client import Counter
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from services.gateway.deps import ProxyDep
from services.gateway.routes_table import ResolvedRoute, Route, UnsafePath, normalise_path
from services.gateway.stale_cache import StaleCache
from shared.api_keys import authenticate
from shared.breaker import BreakerRegistry, CircuitBreakerOpen
from shared.errors import ApiError, error_response
from shared.request_context import current_request_id

PROXY_REQUESTS = Counter(
    "gateway_proxy_requests_total",
    "Proxied requests by route prefix and outcome "
    "(forwarded, stale, rejected, unavailable, timeout, refused)",
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
_FORWARDING_INPUTS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"host"})
# The gateway's server adds its own `date` and `server`, and its middleware the X-Request-ID:
# the upstream's would appear twice.
_ANSWER_DROP = frozenset({b"date", b"server", b"x-request-id"})
_ANSWER_DROP_STREAMED = _HOP_BY_HOP | _ANSWER_DROP
_ANSWER_DROP_READ = _ANSWER_DROP_STREAMED | {b"content-length"}  # the gateway sets its own
# Replaced on stale answers.
_FRESHNESS = frozenset({b"x-cache", b"age"})
# Answers up to this size are read whole (cheaper than streaming, and cacheable); larger ones
# and those of unknown length stream through chunk by chunk.
BUFFER_LIMIT_BYTES = 256 * 1024
STALE = (b"x-cache", b"stale")
# What a call to the upstream raises when the upstream (or the network) fails: connection
# errors, timeouts, an answer that breaks off.
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def _connection_listed(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Headers named in `Connection:` are hop-by-hop too."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def forward_headers(request: Request) -> list[tuple[bytes, bytes]]:
    scope = request.scope
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    listed = _connection_listed(raw)
    drop = _REQUEST_DROP | listed if listed else _REQUEST_DROP
    headers = [(name, value) for name, value in raw if name not in drop]
    # One pass for the values the X-Forwarded-* headers build on (the first of each, as
    # `Request.headers.get` would give), without building the request's header and URL objects.
    seen: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _FORWARDING_INPUTS and name not in seen:
            seen[name] = value
    client = scope.get("client")
    address = client[0].encode("latin-1") if client else b""
    prior = seen.get(b"x-forwarded-for")
    headers.append((b"x-forwarded-for", prior + b", " + address if prior else address))
    headers.append((b"x-forwarded-proto", seen.get(b"x-forwarded-proto", scope["scheme"].encode())))
    headers.append((b"x-forwarded-host", seen.get(b"x-forwarded-host", seen.get(b"host", b""))))
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


def _answer_headers(upstream: aiohttp.ClientResponse, *, keep_length: bool) -> list[tuple[bytes, bytes]]:
    raw = [(name.lower(), value) for name, value in upstream.raw_headers]
    drop = _ANSWER_DROP_STREAMED if keep_length else _ANSWER_DROP_READ
    listed = _connection_listed(raw)
    if listed:
        drop = drop | listed
    return [(name, value) for name, value in raw if name not in drop]


def _cacheable(request: Request, upstream: aiohttp.ClientResponse) -> bool:
    if upstream.status != 200:
        return False
    control = upstream.headers.get("Cache-Control", "").lower()
    if "no-store" in control or "private" in control:
        return False
    return "authorization" not in request.headers and "cookie" not in request.headers


@dataclass
class _Call:
    """One proxied request on its way: where it goes and what it may fall back to."""

    target: ResolvedRoute
    url: str
    cache_key: str | None
    client_broke_off: bool = False  # the client's request body ended early: its doing, not the upstream's

    @property
    def route(self) -> Route:
        return self.target.route

    @property
    def service(self) -> str:
        return self.route.upstream.removesuffix("_url")


class Proxy:
    """Forwards a request in named steps: authenticate, normalise the path, pass the breaker,
    send, relay the answer. Each step either moves the call on or answers itself."""

    def __init__(self, session: aiohttp.ClientSession, breakers: BreakerRegistry, stale: StaleCache) -> None:
        self.session = session
        self.breakers = breakers
        self.stale = stale

    async def forward(self, request: Request, target: ResolvedRoute) -> Response:
        self._authenticate(request, target.route)
        call = self._prepare(request, target)
        breaker = self.breakers.get(call.route.breaker)
        try:
            permit = breaker.acquire()
        except CircuitBreakerOpen as exc:
            return self._unavailable(
                call,
                503,
                "rejected",
                f"{call.service} is unavailable (circuit breaker {exc.name!r} is {exc.state})",
                exc.retry_after,
                {"breaker": exc.name, "state": exc.state},
            )
        try:
            upstream = await self._send(request, call)
        except Exception as exc:
            if call.client_broke_off:
                # The breaker guards the upstream; a client that hung up mid-body says nothing of it.
                permit.release()
                PROXY_REQUESTS.labels(route=call.route.prefix, outcome="client_aborted").inc()
                return error_response(400, "the request body broke off", code="client_aborted")
            if not isinstance(exc, UPSTREAM_ERRORS):
                permit.release()
                raise
            permit.record_exception(exc)
            return self._transport_failure(call, exc, breaker.retry_after)
        except BaseException:
            permit.release()
            raise
        permit.record_result(upstream)
        PROXY_REQUESTS.labels(route=call.route.prefix, outcome="forwarded").inc()
        return await self._relay_answer(request, call, upstream)

    # -- steps -------------------------------------------------------------------------------
    @staticmethod
    def _authenticate(request: Request, route: Route) -> None:
        """Writes the route marks as keyed (uploads) need X-API-Key here already, so an
        unauthenticated body is refused before it is streamed to the upstream."""
        if request.method in route.require_api_key:
            authenticate(request.app.state.settings, request.headers.get("x-api-key"))

    def _prepare(self, request: Request, target: ResolvedRoute) -> _Call:
        """Normalise the path, check it still belongs to the route, build the upstream URL."""
        scope = request.scope
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        try:
            path = normalise_path(raw_path.partition(b"?")[0])
        except UnsafePath as exc:
            PROXY_REQUESTS.labels(route=target.route.prefix, outcome="refused").inc()
            raise ApiError(400, f"refused path: {exc}", code="unsafe_path") from None
        if not target.route.matches(path.decoded):
            PROXY_REQUESTS.labels(route=target.route.prefix, outcome="refused").inc()
            raise ApiError(400, "refused path: it does not belong to this route", code="unsafe_path")
        url = target.base_url + path.encoded
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        cache_key = None
        if request.method == "GET" and target.route.stale_for > 0:
            cache_key = self._cache_key(request, path.decoded)
        return _Call(target, url, cache_key)

    async def _send(self, request: Request, call: _Call) -> aiohttp.ClientResponse:
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        limit = call.route.timeout
        return await self.session.request(
            request.method,
            # Already normalised and canonically encoded: sent as is, never re-quoted or resolved.
            URL(call.url, encoded=True),
            headers=[
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in forward_headers(request)
            ],
            data=self._client_body(request, call) if has_body else None,
            allow_redirects=False,
            # Between reads, not in total: a large upload may take longer than the route's timeout
            # as long as it keeps moving. `connect` includes waiting for a pooled connection.
            timeout=aiohttp.ClientTimeout(connect=limit, sock_connect=min(limit, 3.0), sock_read=limit),
        )

    @staticmethod
    async def _client_body(request: Request, call: _Call) -> AsyncIterator[bytes]:
        """The request body as it arrives, noting when the client breaks it off (the HTTP client
        then reports a transport error that is not the upstream's)."""
        try:
            async for chunk in request.stream():
                yield chunk
        except BaseException:
            call.client_broke_off = True
            raise

    def _transport_failure(self, call: _Call, exc: BaseException, retry_after: float) -> Response:
        if isinstance(exc, aiohttp.ConnectionTimeoutError) or (
            isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, TimeoutError)
        ):
            # Refused, reset, closed before answering, or no connection within the timeout.
            message, status, outcome = f"{call.service} is unreachable", 503, "unavailable"
        elif isinstance(exc, TimeoutError):
            return self._unavailable(
                call,
                504,
                "timeout",
                f"{call.service} did not answer within {call.route.timeout:g}s",
                1.0,
                None,
            )
        else:
            message = f"{call.service} is unreachable: {type(exc).__name__}"
            status, outcome = 503, "unavailable"
        return self._unavailable(call, status, outcome, message, retry_after or 1.0, None)

    async def _relay_answer(
        self, request: Request, call: _Call, upstream: aiohttp.ClientResponse
    ) -> Response:
        """Small answers of known length are read whole (and kept for stale answers); the rest
        stream through. A HEAD answer has no body but keeps the upstream's length and type."""
        if request.method == "HEAD":
            upstream.release()
            head = Response(status_code=upstream.status)
            head.raw_headers = _answer_headers(upstream, keep_length=True)
            return head
        length = upstream.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > BUFFER_LIMIT_BYTES:
            streaming = StreamingResponse(_relay(upstream), status_code=upstream.status)
            streaming.raw_headers = _answer_headers(upstream, keep_length=True)
            return streaming
        try:
            body = await upstream.read()
        except UPSTREAM_ERRORS as exc:
            upstream.close()
            return self._unavailable(
                call, 502, "unavailable", f"the upstream answer broke off: {type(exc).__name__}", 1.0, None
            )
        upstream.release()
        headers = _answer_headers(upstream, keep_length=False)
        if call.cache_key is not None and _cacheable(request, upstream):
            self.stale.put(call.cache_key, upstream.status, headers, body)
        response = Response(body, status_code=upstream.status)
        response.raw_headers.extend(headers)
        return response

    @staticmethod
    def _cache_key(request: Request, path: str) -> str:
        scope = request.scope
        return "{}?{}|{}|{}".format(
            path,
            scope["query_string"].decode("latin-1"),
            request.headers.get("accept", ""),
            request.headers.get("accept-encoding", ""),
        )

    def _unavailable(
        self,
        call: _Call,
        status: int,
        outcome: str,
        message: str,
        retry_after: float,
        details: dict[str, Any] | None,
    ) -> Response:
        prefix = call.route.prefix
        if call.cache_key is not None:
            cached = self.stale.get(call.cache_key, call.route.stale_for)
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


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    complete = False
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
        complete = True
    finally:
        # A whole answer gives its connection back to the pool; a broken-off one closes it.
        if complete:
            upstream.release()
        else:
            upstream.close()


def build_router(routes: list[ResolvedRoute]) -> APIRouter:
    """Catch-all routes per prefix, forwarding through the app's Proxy (a typed dependency).

    Each method is its own route so that every operation of the OpenAPI document has its own id.
    These routes are what the OpenAPI document describes and what the router would run; in the
    running app :class:`ProxyDispatch` answers the same requests first, through the same
    `Proxy.forward`, without FastAPI's route walk and dependency resolution.
    """
    router = APIRouter(tags=["proxy"])
    for target in routes:

        def make_handlers(bound: ResolvedRoute) -> tuple[Any, Any]:
            async def forward_prefix(request: Request, proxy: ProxyDep) -> Response:
                return await proxy.forward(request, bound)

            async def forward(
                request: Request,
                proxy: ProxyDep,
                path: Annotated[str, PathParam(description="the rest of the path, sent upstream as is")],
            ) -> Response:
                return await proxy.forward(request, bound)

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


@dataclass(frozen=True)
class _Dispatch:
    """What ProxyDispatch needs of one route: its target, the route objects the router would
    have chosen (operation timing, metrics and tracing name requests by them), and the
    gateway's own routes that may claim paths under its prefix."""

    target: ResolvedRoute
    prefix_route: BaseRoute
    path_routes: dict[str, BaseRoute]
    own_routes: tuple[tuple[re.Pattern[str], frozenset[str] | None], ...]


class ProxyDispatch:
    """The innermost middleware: requests under a proxy prefix go straight to `Proxy.forward`.

    Hand-written (pure ASGI) because FastAPI's way costs most of the gateway's time per proxied
    request: the router tries every route of the app in turn before the catch-all proxy routes
    (they come last so that the gateway's own routes win), then resolves the route's
    dependencies. Here a request is matched against the route table's prefixes (longest first),
    and the route object FastAPI would have chosen is put in the scope as the router would. What
    the router would have given to one of the gateway's own routes (only possible when a prefix
    covers them, such as `/`) and methods the proxy does not serve go on to the router, so every
    answer is the one the documented routes give.
    """

    def __init__(self, app: ASGIApp, routes: list[ResolvedRoute]) -> None:
        self.app = app
        self.routes = routes
        self._table: list[_Dispatch] | None = None

    def _build(self, application: Any) -> list[_Dispatch]:
        proxy_paths: dict[str, ResolvedRoute] = {}
        for target in self.routes:
            proxy_paths[target.route.prefix] = target
            proxy_paths[target.route.prefix + "/{path:path}"] = target
        by_target: dict[str, tuple[BaseRoute | None, dict[str, BaseRoute]]] = {
            t.route.prefix: (None, {}) for t in self.routes
        }
        own: list[tuple[str, re.Pattern[str], frozenset[str] | None]] = []
        for context in iter_route_contexts(application.router.routes):
            route = context.original_route
            path = str(getattr(context, "path", None) or getattr(route, "path", ""))
            found = proxy_paths.get(path)
            if found is None:
                methods = getattr(context, "methods", None)
                own.append((path, context.path_regex, frozenset(methods) if methods else None))
                continue
            prefix_route, path_routes = by_target[found.route.prefix]
            if path == found.route.prefix:
                by_target[found.route.prefix] = (route, path_routes)
            else:
                for method in context.methods or ():
                    path_routes[method] = route
        table = []
        for target in self.routes:
            prefix_route, path_routes = by_target[target.route.prefix]
            if prefix_route is None:
                continue  # not mounted on this app
            literal = target.route.prefix
            # An own route may match under this prefix when the literal start of its template
            # and the prefix overlap: those are checked per request (none in the shipped table).
            overlapping = tuple(
                (regex, methods)
                for path, regex, methods in own
                if path.split("{", 1)[0].startswith(literal) or literal.startswith(path.split("{", 1)[0])
            )
            table.append(_Dispatch(target, prefix_route, path_routes, overlapping))
        return table

    @staticmethod
    def _owned(entry: _Dispatch, path: str, method: str) -> bool:
        """One of the gateway's own routes matches fully: the router would choose it first."""
        return any(
            regex.match(path) and (methods is None or method in methods)
            for regex, methods in entry.own_routes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        application = scope.get("app")
        proxy: Proxy | None = getattr(getattr(application, "state", None), "proxy", None)
        if proxy is None:
            await self.app(scope, receive, send)
            return
        if self._table is None:
            self._table = self._build(application)
        path: str = scope["path"]
        method: str = scope["method"]
        for entry in self._table:
            prefix = entry.target.route.prefix
            if path == prefix:
                route = entry.prefix_route
                params: dict[str, str] = {}
            elif prefix == "/" or path.startswith(prefix + "/"):
                route = entry.path_routes.get(method)  # type: ignore[assignment]
                params = {"path": path[len(prefix) + 1 :] if prefix != "/" else path[1:]}
            else:
                continue
            if method not in METHODS or route is None or self._owned(entry, path, method):
                break  # the router's answer: an own route, or 405
            scope["route"] = route
            scope["endpoint"] = getattr(route, "endpoint", None)
            scope["path_params"] = params
            try:
                response = await proxy.forward(Request(scope, receive), entry.target)
            except ApiError as exc:
                response = exc.response()
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
