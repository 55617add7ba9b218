"""Analytics app."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.analytics import __version__, admin_routes, performance_routes, routes
from services.analytics.analyses import CACHE_TTLS, AnalyticsService
from services.analytics.anomalies import AnomalyWindow
from services.analytics.invalidation import EventsListener
from services.analytics.rollup_refresher import RollupRefresher
from services.analytics.settings import AnalyticsSettings, get_settings
from services.analytics.tuning import AnalyticsTuning
from services.analytics.uploads import routes as upload_routes
from services.analytics.worker_pool import WorkerPool
from shared.breaker import CircuitBreakerOpen, get_breaker_registry
from shared.cache import (
    HierarchicalCacheManager,
    IntelligentCacheWarmer,
    build_cache_manager,
    set_cache_manager,
)
from shared.db import create_pool, ping
from shared.errors import error_response
from shared.resources import get_resource_guard
from shared.service_app import create_service_app, include_routes, readiness_checks

log = logging.getLogger(__name__)


def _background_paused() -> bool:
    guard = get_resource_guard()
    return guard is not None and guard.throttled


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _open_resources(app, settings, stack)
            yield

    app = create_service_app(
        service="analytics",
        version=__version__,
        settings=settings,
        lifespan=lifespan,
        description="Access analytics, uploads and performance intake.",
    )
    _install_dependency_error_handlers(app)
    include_routes(app, routes.router)
    include_routes(app, admin_routes.router)
    include_routes(app, upload_routes.router)
    include_routes(app, performance_routes.router)
    return app


async def _open_resources(
    app: FastAPI, settings: AnalyticsSettings, stack: contextlib.AsyncExitStack
) -> None:
    """Open everything the routes use, in dependency order; `stack` closes it in reverse."""
    dsn = settings.require_database_url()
    pool = await _open_database(app, dsn, settings, stack)
    refresher = RollupRefresher(  # keeps the rollups behind the stored events
        pool,
        busy_rows_per_s=settings.rollup_defer_above_rows_per_s,
        max_defer_s=settings.rollup_max_defer_s,
    )
    refresher.start()
    stack.push_async_callback(refresher.stop)
    app.state.rollup_refresher = refresher
    workers = WorkerPool(settings.analytics_max_workers)
    await workers.start()
    stack.callback(workers.close)
    app.state.workers = workers
    cache = await _open_cache(app, dsn, settings, stack)
    breakers = get_breaker_registry(settings.circuit_breaker_config)
    window = AnomalyWindow(
        default=timedelta(days=settings.anomalies_default_window_days),
        maximum=timedelta(
            days=max(settings.anomalies_max_window_days, settings.anomalies_default_window_days)
        ),
    )
    service = AnalyticsService(pool, workers, cache, breakers.get("database"), window)
    app.state.analytics = service
    app.state.tuning = AnalyticsTuning(
        chunk_size=settings.analytics_chunk_size,
        workers=workers,
        cache=cache,
        max_memory_mb=settings.analytics_max_memory_mb,
    )
    app.state.cache_warmer = await _start_warmer(cache, service, settings, stack)


async def _open_database(
    app: FastAPI, dsn: str, settings: AnalyticsSettings, stack: contextlib.AsyncExitStack
) -> asyncpg.Pool:
    pool = await create_pool(dsn, min_size=1, max_size=10, command_timeout=settings.database_timeout_s)
    stack.push_async_callback(pool.close)
    app.state.pool = pool
    readiness_checks(app)["database"] = lambda: ping(pool)
    return pool


async def _open_cache(
    app: FastAPI, dsn: str, settings: AnalyticsSettings, stack: contextlib.AsyncExitStack
) -> HierarchicalCacheManager:
    """The tiered cache, its metric series, and the listener that invalidates it on new events."""
    cache = build_cache_manager(settings)
    set_cache_manager(cache)
    stack.callback(set_cache_manager, None)
    await cache.start()
    stack.push_async_callback(cache.close)
    app.state.cache = cache
    for name in CACHE_TTLS:  # hit/miss series exist from the first scrape on
        cache.register(name)
    listener = EventsListener(dsn, cache)
    listener.start()
    stack.push_async_callback(listener.stop)
    app.state.events_listener = listener
    return cache


async def _start_warmer(
    cache: HierarchicalCacheManager,
    service: AnalyticsService,
    settings: AnalyticsSettings,
    stack: contextlib.AsyncExitStack,
) -> IntelligentCacheWarmer | None:
    """Warming pays off only with a tier that outlives the process (Redis or disk)."""
    if cache.l2 is None and cache.l3 is None:
        return None
    warmer = IntelligentCacheWarmer(cache, service.cached_functions(), should_pause=_background_paused)
    await warmer.start(warm=settings.cache_warm_on_start)
    stack.push_async_callback(warmer.stop)
    return warmer


def _install_dependency_error_handlers(app: FastAPI) -> None:
    """A dependency that cannot answer (open breaker, database down or failing) is a 503 with
    `Retry-After`, never a 500: the client's request was fine."""

    @app.exception_handler(CircuitBreakerOpen)
    async def _breaker_open(_: Request, exc: CircuitBreakerOpen) -> JSONResponse:
        retry = max(1, int(exc.retry_after + 0.999))
        return error_response(
            503,
            f"{exc.name} is unavailable (circuit open) and nothing is cached to serve",
            code="dependency_unavailable",
            headers={"Retry-After": str(retry)},
            details={"dependency": exc.name, "retry_after": retry},
        )

    @app.exception_handler(asyncpg.PostgresError)
    async def _database_error(_: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        # Queries are built by the service, never from raw input: a failing one means the
        # database is not in a state to answer (migrations missing, server trouble).
        log.error("database error: %s", exc)
        return error_response(
            503,
            "the database cannot answer this query now and nothing is cached to serve",
            code="database_error",
            headers={"Retry-After": "5"},
            details={"sqlstate": getattr(exc, "sqlstate", None)},
        )

    @app.exception_handler(TimeoutError)
    async def _database_timeout(_: Request, exc: TimeoutError) -> JSONResponse:
        # asyncpg's only error for a connection not made within its budget, or a query past
        # DATABASE_TIMEOUT: the database did not answer in time, the request was fine.
        # With its traceback: where it waited (a connection, a lock, a commit) is the cause.
        log.error("database timeout: %r", exc, exc_info=exc)
        return error_response(
            503,
            "the database did not answer in time and nothing is cached to serve",
            code="dependency_unavailable",
            headers={"Retry-After": "5"},
            details={"dependency": "database"},
        )

    # A name that does not resolve (socket.gaierror) is an OSError, not a ConnectionError.
    @app.exception_handler(socket.gaierror)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(ConnectionError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # A refused connection or an unknown host is the database being away. Any other
        # connection error (reset, a broken pipe, a connection in a wrong state) keeps its
        # traceback in the log, which says where it came from.
        expected = isinstance(exc, asyncpg.PostgresConnectionError | socket.gaierror | ConnectionRefusedError)
        log.error("database unavailable: %r", exc, exc_info=None if expected else exc)
        return error_response(
            503,
            "the database is unavailable and nothing is cached to serve",
            code="dependency_unavailable",
            headers={"Retry-After": "5"},
            details={"dependency": "database"},
        )
