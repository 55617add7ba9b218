"""The app factory: common endpoints, the error envelope, request ids, readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from shared import tracing
from shared.errors import ApiError
from shared.service_app import create_service_app, readiness_checks
from shared.settings import FleetSettings


class Item(BaseModel):
    count: int


def build_app(ready: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def database() -> None:
            if not ready:
                raise ConnectionRefusedError("connect to 10.1.2.3:5432 as postgres:hunter2 refused")

        async def slow() -> None:
            await asyncio.sleep(0 if ready else 5)

        readiness_checks(app)["database"] = database
        readiness_checks(app)["slow"] = slow
        yield

    app = create_service_app(service="probe", version="1.2.3", settings=FleetSettings(), lifespan=lifespan)

    @app.post("/items")
    async def items(item: Item) -> dict[str, int]:
        return {"count": item.count}

    @app.get("/teapot")
    async def teapot() -> None:
        raise ApiError(409, "the pot is busy", details={"pot": 1})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


async def call(app: FastAPI, method: str, path: str, **kwargs: object) -> httpx.Response:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


async def test_health_is_static() -> None:
    response = await call(build_app(), "GET", "/health")
    assert response.json() == {"status": "ok", "service": "probe", "version": "1.2.3"}


async def test_ready_reports_each_dependency() -> None:
    ok = await call(build_app(ready=True), "GET", "/ready")
    assert ok.status_code == 200
    assert ok.json()["checks"] == {"database": "ok", "slow": "ok"}
    bad = await call(build_app(ready=False), "GET", "/ready")
    assert bad.status_code == 503
    body = bad.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {"database": "unavailable", "slow": "timeout"}
    assert body["errors"]["database"]["code"] == "unavailable"
    assert body["errors"]["slow"]["code"] == "timeout"


async def test_ready_never_echoes_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.service_app"):
        bad = await call(build_app(ready=False), "GET", "/ready")
    for leak in ("10.1.2.3", "5432", "hunter2", "ConnectionRefusedError", "refused"):
        assert leak not in bad.text
    # ...the operator finds it in the log instead.
    assert any("10.1.2.3:5432" in r.getMessage() for r in caplog.records)


async def test_validation_errors_say_what_and_where() -> None:
    response = await call(build_app(), "POST", "/items", json={"count": "many"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "body.count" in error["message"]
    assert error["details"][0]["loc"] == "body.count"


async def test_malformed_json_is_a_4xx() -> None:
    response = await call(
        build_app(), "POST", "/items", content=b"{", headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


async def test_api_errors_and_unknown_paths_use_the_envelope() -> None:
    response = await call(build_app(), "GET", "/teapot")
    assert response.status_code == 409
    assert response.json() == {
        "error": {"code": "conflict", "message": "the pot is busy", "details": {"pot": 1}}
    }
    missing = await call(build_app(), "GET", "/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_unexpected_errors_are_500_without_internals() -> None:
    response = await call(build_app(), "GET", "/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def test_request_id_is_kept_or_minted() -> None:
    kept = await call(build_app(), "GET", "/health", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    minted = await call(build_app(), "GET", "/health")
    assert len(minted.headers["x-request-id"]) == 32


async def test_metrics_are_exposed_in_prometheus_format() -> None:
    app = build_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            await client.post("/items", json={"count": 1})
            text = (await client.get("/metrics")).text
    assert "http_requests_total" in text
    assert 'handler="/items"' in text


def build_traced_app(monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """An app built as with TRACING_ENABLED=true (no exporter needed: the span machinery and the
    route lookup run all the same), its routes on an included router, as the services' are."""
    monkeypatch.setattr(tracing, "_initialised", True)
    app = create_service_app(service="probe", version="1.2.3", settings=FleetSettings())
    router = APIRouter()

    @router.get("/things")
    async def things() -> dict[str, int]:
        return {"n": 1}

    @router.put("/things")
    async def replace_things() -> dict[str, int]:
        return {"n": 2}

    @router.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    return app


@pytest.mark.parametrize("method", ["TRACE", "DELETE", "POST", "OPTIONS"])
async def test_an_undeclared_method_on_a_router_route_is_405_listing_the_allowed_ones(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    response = await call(build_traced_app(monkeypatch), method, "/things")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PUT"
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert len(response.headers["x-request-id"]) == 32


async def test_a_crash_is_a_500_envelope_with_a_request_id_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = build_traced_app(monkeypatch)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            crashed = await client.get("/crash", headers={"X-Request-ID": "crash-1"})
            await client.request("TRACE", "/things")
            text = (await client.get("/metrics")).text
    assert crashed.status_code == 500
    assert crashed.headers["x-request-id"] == "crash-1"
    assert crashed.headers["content-type"] == "application/json"
    assert crashed.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal error; the incident was logged",
            "details": None,
        }
    }
    assert 'http_requests_total{handler="/crash",method="GET",status="500"} 1.0' in text
    assert 'http_requests_total{handler="/things",method="TRACE",status="405"} 1.0' in text
