"""OpenTelemetry set-up: Jaeger (Thrift over HTTP), optional OTLP/HTTP, auto-instrumentation.

Spans leave through a `BatchSpanProcessor`, so a collector that does not listen only costs a
dropped export in a background thread; start-up never waits for it, and the exporters are
wrapped so an absent collector logs one warning, not a traceback per batch (`_quiet_export`).
Each exporter is its own destination: point `OTEL_EXPORTER_OTLP_ENDPOINT` at a different
backend than `JAEGER_ENDPOINT` (not at the same Jaeger), or every span is stored twice.
Resource: `service.name`, `service.version`, `deployment.environment`; sampling: parent-based,
`TRACING_SAMPLE_RATIO` of new traces.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared._quiet_export import QuietExporter

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

    from shared.settings import FleetSettings

log = logging.getLogger(__name__)

_initialised = False


def init_tracing(service_name: str, settings: FleetSettings | None = None, version: str = "") -> bool:
    """Install the tracer provider and instrument the client libraries once per process.

    Returns True when tracing is on. Safe to call more than once (tests build several apps).
    """
    global _initialised
    from shared.settings import get_fleet_settings

    settings = settings or get_fleet_settings()
    if not settings.tracing_enabled:
        return False
    if _initialised:
        return True

    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": version or _fleet_version(),
            "deployment.environment": settings.deployment_environment,
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBasedTraceIdRatio(settings.tracing_sample_ratio)
    )
    try:
        from opentelemetry.exporter.jaeger.thrift import JaegerExporter

        jaeger = JaegerExporter(collector_endpoint=settings.jaeger_endpoint, timeout=2)
        provider.add_span_processor(BatchSpanProcessor(QuietExporter(jaeger, settings.jaeger_endpoint)))
    except Exception as exc:  # the exporter is optional at run time; tracing still works in-process
        log.warning("Jaeger exporter unavailable: %s", exc)
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        otlp = OTLPSpanExporter(endpoint=endpoint, timeout=2)
        provider.add_span_processor(BatchSpanProcessor(QuietExporter(otlp, endpoint)))
    trace.set_tracer_provider(provider)
    _instrument_libraries()
    _initialised = True
    return True


def tracing_active() -> bool:
    """True once this process exports spans (work done only for spans can be skipped otherwise)."""
    return _initialised


def _fleet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sentinel-fleet")
    except PackageNotFoundError:
        return "0.0.0"


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (
        HTTPXClientInstrumentor(),
        AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
        RedisInstrumentor(),
        AIOKafkaInstrumentor(),
    ):
        try:
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument()
        except Exception as exc:  # a broken instrumentation must not take the service down
            log.warning("could not instrument %s: %s", type(instrumentor).__name__, exc)


def _span_details(scope: Scope) -> tuple[str, dict[str, str]]:
    """The span's first name is the method alone: the route template is only known once the router
    has matched, and the raw path would give every event id its own span name."""
    method = str(scope.get("method", "HTTP")).upper()
    return (method if method in _KNOWN_METHODS else "HTTP"), {}


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class _RouteNamer:
    """Inside the tracing middleware: once the router has matched, names the span `METHOD /route`.

    FastAPI's own instrumentation resolves the route before routing by walking `app.routes`, and
    fails (AttributeError, answered as a bare 500) on routers included with `include_router` when
    the method does not match; reading the route the router actually chose avoids that walk.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_naming(message: Message) -> None:
            # The server span ends with the answer: name it when the answer starts, by which time
            # the router has chosen the route.
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = getattr(route, "path_format", None) or getattr(route, "path", None)
                span = trace.get_current_span()
                if path and span.is_recording():
                    method, _ = _span_details(scope)
                    span.update_name(f"{method} {path}")
                    span.set_attribute("http.route", path)
            await send(message)

        await self.app(scope, receive, send_naming)


def instrument_httpx_client(client: httpx.AsyncClient) -> None:
    """Client spans (and `traceparent` injection) for a client with its own transport.

    The global instrumentation wraps httpx's own transport class only; a client over another
    transport (the gateway's httpx-over-aiohttp pool) is instrumented on the instance.
    """
    if not _initialised:
        return
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if isinstance(getattr(client, "_transport", None), httpx.AsyncHTTPTransport):
        return  # already traced by the global instrumentation
    HTTPXClientInstrumentor.instrument_client(client)


def instrument_app(app: FastAPI) -> None:
    """Trace every request of `app` (health, readiness and metrics excluded: they are scraped constantly).

    Uses the ASGI middleware of OpenTelemetry directly (see :class:`_RouteNamer` for why not the
    FastAPI instrumentor); it goes innermost, so its spans see the request id and the error
    envelope of the middlewares around it.
    """
    if not _initialised:
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(_RouteNamer)
    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls="health,ready,metrics",
        default_span_details=_span_details,
    )
