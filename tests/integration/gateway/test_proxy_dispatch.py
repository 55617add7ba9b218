"""The proxy's fast path answers exactly what the declared proxy routes would.

Requests under a route-table prefix are answered by `ProxyDispatch` (not FastAPI's router), are
named by the declared route in the HTTP metrics, and leave to the router what it would answer
otherwise: methods the proxy does not serve, and the gateway's own routes under a prefix.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.gateway.app import create_app
from services.gateway.deps import get_proxy
from services.gateway.settings import GatewaySettings
from tests.integration.gateway.conftest import serving, write_breakers, write_routes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _where(request: Request) -> Response:
    return JSONResponse({"path": request.url.path, "method": request.method})


UPSTREAM = Starlette(
    routes=[Route("/{rest:path}", _where, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])]
)


def _settings(tmp_path: Path, upstream_url: str, routes: Path) -> GatewaySettings:
    return GatewaySettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        GATEWAY_RUN_EVENT_PROCESSOR=False,
        TRACING_ENABLED=False,
        ANALYTICS_URL=upstream_url,
        CIRCUIT_BREAKER_CONFIG=write_breakers(tmp_path),
        GATEWAY_ROUTES_CONFIG=routes,
    )


async def _never_the_router() -> None:
    raise AssertionError("the router's proxy route ran: the fast path did not answer")


async def test_proxied_requests_skip_the_router_and_are_named_by_the_declared_route(tmp_path: Path) -> None:
    async with serving(UPSTREAM) as up:
        app = create_app(_settings(tmp_path, up.url, write_routes(tmp_path, "analytics_url")))
        app.dependency_overrides[get_proxy] = _never_the_router
        async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            for path in ("/api/v1/analytics/summary", "/api/v1/analytics", "/api/v1/analytics/"):
                response = await client.get(path, params={"q": "1"})
                assert response.status_code == 200, (path, response.text)
                assert response.json() == {"path": path, "method": "GET"}
            assert (await client.delete("/api/v1/analytics/x")).json()["method"] == "DELETE"
            # Not a method the proxy serves: the router's 405, in the fleet's envelope.
            refused = await client.request("TRACE", "/api/v1/analytics/x")
            assert refused.status_code == 405
            assert refused.json()["error"]["code"] == "method_not_allowed"
            # The gateway's own routes are untouched.
            assert (await client.get("/health")).json()["service"] == "gateway"
        metrics = generate_latest(app.state.http_metrics_registry).decode()
    assert 'handler="/api/v1/analytics/{path:path}",method="GET",status="200"' in metrics
    assert 'handler="/api/v1/analytics",method="GET",status="200"' in metrics


async def test_the_gateways_own_routes_win_under_a_prefix_that_covers_them(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        yaml.safe_dump({"routes": [{"prefix": "/", "upstream": "analytics_url", "breaker": "analytics"}]})
    )
    async with serving(UPSTREAM) as up:
        app = create_app(_settings(tmp_path, up.url, routes))
        async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            assert (await client.get("/health")).json()["service"] == "gateway"
            assert (await client.get("/openapi.json")).json()["info"]["title"].endswith("gateway")
            assert (await client.get("/api/v1/anything")).json() == {
                "path": "/api/v1/anything",
                "method": "GET",
            }
            # An own route's path with a method it does not serve: the proxy's, as the router would.
            forwarded = await client.delete("/health")
            assert forwarded.json() == {"path": "/health", "method": "DELETE"}
