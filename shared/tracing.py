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
    """Trace every request of `app` (health and metrics excluded: they are scraped constantly)."""
    if not _initialised:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="health,ready,metrics")
