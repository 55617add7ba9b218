"""Times every HTTP request of a service in the PerformanceMonitor, by route template.

Pure ASGI (no BaseHTTPMiddleware task per request). The operation name is
`http.<METHOD> <route template>` (`http.GET /api/v1/analytics/summary`), read from the route
Starlette's router matched; an unmatched path is counted under `http.<METHOD> <unmatched>`, so
scanners probing random paths cannot grow the monitor's names.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.performance.monitor import PerformanceMonitor, get_performance_monitor

UNMATCHED = "<unmatched>"
# Scraped every few seconds and never interesting as an operation of the service.
EXCLUDED_PATHS = frozenset({"/metrics", "/health", "/ready"})


def route_operation(method: str, template: str) -> str:
    return f"http.{method} {template}"


class OperationTimingMiddleware:
    def __init__(self, app: ASGIApp, monitor: PerformanceMonitor | None = None) -> None:
        self.app = app
        self.monitor = monitor or get_performance_monitor()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXCLUDED_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            self.monitor.record(route_operation(scope["method"], template), time.perf_counter() - start)
