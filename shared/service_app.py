"""The FastAPI app factory every service uses: health, readiness, metrics, errors, request ids.

A service supplies its name, its lifespan (which opens its pools and clients and registers
readiness checks) and its routers; the factory adds the endpoints every service has (`/health`,
`/ready`, `/metrics`, `/openapi.json`, `/docs`, `/redoc`; docs/reference.md) and the
middlewares, from the outside in: request id, HTTP metrics, error envelope, operation timing,
admin-token check, tracing. That order is what makes a crash anywhere below still answer with
the envelope, carry `X-Request-ID` and be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.admin import AdminFirstMiddleware
from shared.breaker.routes import router as breakers_router
from shared.errors import ErrorEnvelopeMiddleware, install_error_handlers
from shared.event_vocabulary import get_event_limits
from shared.http_metrics import RouteTemplateMetricsMiddleware
from shared.openapi import fleet_openapi, install_offline_docs
from shared.performance.asgi import OperationTimingMiddleware
from shared.performance.service import monitoring_lifespan
from shared.request_context import request_id_var
from shared.resources import start_resource_guard
from shared.settings import FleetSettings
from shared.tracing import instrument_app

ReadinessCheck = Callable[[], Awaitable[object]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

READINESS_TIMEOUT_S = 2.0

log = logging.getLogger(__name__)

# What `/ready` says about a failed check: a code and a fixed sentence. Exception text can hold
# addresses, user names or bootstrap servers, so it goes to the log only.
READINESS_MESSAGES = {
    "timeout": f"the dependency did not answer within {READINESS_TIMEOUT_S:g}s",
    "unavailable": "the dependency is unavailable; the service log has the cause",
}


class RequestIdMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which costs a task per request): keeps or mints
    `X-Request-ID`, exposes it to logs through a context variable and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        if not request_id:
            request_id = uuid.uuid4().hex
        token = request_id_var.set(request_id)
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", raw_id))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class Health(BaseModel):
    status: Literal["ok"]
    service: str
    version: str


class ReadinessError(BaseModel):
    code: Literal["timeout", "unavailable"]
    message: str


class Readiness(BaseModel):
    status: Literal["ok", "degraded"]
    service: str
    checks: dict[str, Literal["ok", "timeout", "unavailable"]] = Field(
        description='per dependency: "ok", "timeout" or "unavailable" (the cause is logged)'
    )
    errors: dict[str, ReadinessError] | None = Field(None, description="only when degraded")


def readiness_checks(app: FastAPI) -> dict[str, ReadinessCheck]:
    """The mutable registry of readiness checks of `app`; lifespans add theirs here."""
    checks: dict[str, ReadinessCheck] | None = getattr(app.state, "readiness_checks", None)
    if checks is None:
        checks = {}
        app.state.readiness_checks = checks
    return checks


async def _run_check(name: str, check: ReadinessCheck) -> str:
    """ "ok", "timeout" or "unavailable"; the cause of a failure is logged, never answered."""
    try:
        await asyncio.wait_for(check(), timeout=READINESS_TIMEOUT_S)
    except TimeoutError:
        log.warning("readiness check %s timed out after %gs", name, READINESS_TIMEOUT_S)
        return "timeout"
    except Exception as exc:
        log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
        return "unavailable"
    return "ok"


def create_service_app(
    *,
    service: str,
    version: str,
    settings: FleetSettings,
    lifespan: Lifespan | None = None,
    title: str | None = None,
    description: str = "",
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        readiness_checks(app)
        # Every service guards its memory and CPU; background work waits on the guard.
        guard = start_resource_guard(settings, service=service)
        app.state.resource_guard = guard
        try:
            async with monitoring_lifespan(app, settings.monitoring_config, service):
                if lifespan is None:
                    yield
                else:
                    async with lifespan(app):
                        yield
        finally:
            await guard.stop()

    # The event vocabulary's settings (time window, event size) are read now, so a wrong value
    # stops start-up with its name instead of failing the first event.
    get_event_limits()
    app = FastAPI(
        title=title or f"Sentinel Fleet {service}",
        version=version,
        description=description,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service_name = service
    app.state.settings = settings
    readiness_checks(app)
    install_error_handlers(app)
    _add_common_routes(app, service, version)
    install_offline_docs(app)
    app.openapi = lambda: fleet_openapi(app)  # type: ignore[method-assign]

    # Middlewares run in the reverse order of addition: the last added is the outermost.
    instrument_app(app)
    app.add_middleware(AdminFirstMiddleware)
    app.add_middleware(OperationTimingMiddleware)  # times admin refusals too
    app.add_middleware(ErrorEnvelopeMiddleware)
    # Each app gets its own registry for the HTTP metrics: the instrumentator silently records
    # nothing for a second app registering the same names in one process (tests build many).
    # /metrics serves that registry plus the process-wide one (breakers, caches, processor...).
    http_registry = CollectorRegistry(auto_describe=True)
    app.add_middleware(
        RouteTemplateMetricsMiddleware,
        should_group_status_codes=False,
        excluded_handlers=["/metrics", "/health", "/ready"],
        registry=http_registry,
        metric_namespace="",
        metric_subsystem="",
    )
    app.state.http_metrics_registry = http_registry
    app.add_middleware(RequestIdMiddleware)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # A service running as several worker processes (shared.runner sets the directory):
            # every metric lives in that directory's files, and one scrape sums the workers'
            # counters and histograms (gauges carry a `pid` label).
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        body = generate_latest(REGISTRY) + generate_latest(http_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    include_routes(app, breakers_router)
    return app


def include_routes(app: FastAPI, router: APIRouter) -> None:
    """Add the routes of `router` (which carry their full paths) to the app's own route list.

    Instead of `app.include_router`: since FastAPI 0.137 that keeps the router as a node which
    builds the matched route's request handler again on every request (about 6 % of the gateway's
    CPU per ingest request, sampled under load), and makes route-name lookups walk it. Routes
    added as they are get their handler built once. Router-level dependencies are not applied
    here, so routers passed in must declare theirs on each route (none of the fleet's has any).
    """
    if router.dependencies:
        raise ValueError("router-level dependencies would be lost; declare them per route")
    app.router.routes.extend(router.routes)


def _add_common_routes(app: FastAPI, service: str, version: str) -> None:
    @app.get("/health", tags=["ops"], response_model=Health)
    async def health() -> Health:
        """Liveness: answers without touching any dependency."""
        return Health(status="ok", service=service, version=version)

    @app.get(
        "/ready",
        tags=["ops"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "a dependency does not answer"}},
    )
    async def ready() -> JSONResponse:
        """Readiness: every dependency is checked (within a timeout each)."""
        checks = readiness_checks(app)
        names = list(checks)
        results = await asyncio.gather(*(_run_check(n, checks[n]) for n in names))
        outcome = dict(zip(names, results, strict=True))
        healthy = all(r == "ok" for r in results)
        body = Readiness.model_validate(
            {
                "status": "ok" if healthy else "degraded",
                "service": service,
                "checks": outcome,
                "errors": None
                if healthy
                else {
                    n: {"code": r, "message": READINESS_MESSAGES[r]} for n, r in outcome.items() if r != "ok"
                },
            }
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if healthy else 503)
