"""The fleet's HTTP metrics: prometheus-fastapi-instrumentator's, named by the route that was run.

The library's middleware finds each request's route template before the request runs, by
walking every route of the app (and flattening FastAPI's included routers) on every request;
in `bench gateway_overhead` that walk and the objects built around it were about a third of
the gateway's CPU per proxied request. :class:`RouteTemplateMetricsMiddleware` keeps the
library's metrics, buckets and instrumentation functions and only replaces that middleware's
`__call__`: the template is read from the route routing put in the scope once the request is
answered (as :mod:`shared.performance.asgi` does), so the same metrics cost a fraction.
"""

from __future__ import annotations

import asyncio
from timeit import default_timer
from typing import Any, cast

from prometheus_fastapi_instrumentator import metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _Answer:
    """What the library's instrumentations read of a response: its headers."""

    __slots__ = ("headers",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.headers = Headers(raw=raw)


class RouteTemplateMetricsMiddleware(PrometheusInstrumentatorMiddleware):
    """The library's middleware with the options the fleet uses: status codes not grouped,
    requests no route took grouped under `none`, handlers excluded by pattern. The others
    (in-progress gauges, body handlers, rounding, root paths) are refused at construction."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        unsupported = {
            "should_instrument_requests_inprogress",
            "body_handlers",
            "should_round_latency_decimals",
            "should_include_root_path",
        } & {name for name, value in options.items() if value}
        if unsupported:
            raise ValueError(f"RouteTemplateMetricsMiddleware does not support {sorted(unsupported)}")
        super().__init__(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = default_timer()
        status_code = 500
        headers: list[tuple[bytes, bytes]] = []
        answered_at: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code, headers, answered_at
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                status_code = message["status"]
                answered_at = default_timer()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            info = self._info(scope, start, answered_at, status_code, headers)
            if info is not None:
                for instrumentation in self.instrumentations:
                    instrumentation(info)
                if self.async_instrumentations:
                    await asyncio.gather(*(record(info) for record in self.async_instrumentations))

    def _info(
        self,
        scope: Scope,
        start: float,
        answered_at: float | None,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
    ) -> metrics.Info | None:
        template = getattr(scope.get("route"), "path", None)
        handler = template or scope.get("path", "")
        if self._is_handler_excluded(handler, bool(template)):
            return None
        if not template and self.should_group_untemplated:
            handler = "none"
        status = str(int(status_code))
        if self.should_group_status_codes:
            status = status[0] + "xx"
        now = default_timer()
        return metrics.Info(
            request=Request(scope),
            response=cast(Response, _Answer(headers)),
            method=scope["method"],
            modified_handler=handler,
            modified_status=status,
            modified_duration=max(now - start, 0.0),
            modified_duration_without_streaming=max(answered_at - start, 0.0) if answered_at else 0.0,
        )
