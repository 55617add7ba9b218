"""The admin guard: the token is checked before an admin route parses its body."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, SecretStr

from shared.admin import AdminOnly
from shared.service_app import create_service_app
from shared.settings import FleetSettings


class Knobs(BaseModel):
    size: int


def build_app(token: str | None) -> FastAPI:
    settings = FleetSettings(admin_token=SecretStr(token) if token else None)
    app = create_service_app(service="probe", version="0.0.1", settings=settings)

    @app.put("/admin/knobs")
    async def put_knobs(body: Knobs, _: AdminOnly) -> dict[str, int]:
        return {"size": body.size}

    @app.post("/open")
    async def open_write(body: Knobs) -> dict[str, int]:
        return {"size": body.size}

    return app


async def send(app: FastAPI, method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


BAD_JSON = {"content": b"{not json", "headers": {"content-type": "application/json"}}


async def test_bad_json_without_a_token_is_401_not_422() -> None:
    response = await send(build_app("s3cret"), "PUT", "/admin/knobs", **BAD_JSON)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "x-request-id" in response.headers


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Bearer s3cret2", "Bearer  s3cre"])
async def test_bad_json_with_a_wrong_token_is_403(authorization: str) -> None:
    headers = {**BAD_JSON["headers"], "authorization": authorization}  # type: ignore[dict-item]
    response = await send(build_app("s3cret"), "PUT", "/admin/knobs", content=b"{", headers=headers)
    assert response.status_code == 403


async def test_a_disabled_admin_api_refuses_before_parsing() -> None:
    response = await send(build_app(None), "PUT", "/admin/knobs", **BAD_JSON)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_disabled"


async def test_with_the_token_the_body_is_validated_as_usual() -> None:
    headers = {"authorization": "Bearer s3cret"}
    bad = await send(build_app("s3cret"), "PUT", "/admin/knobs", json={"size": "x"}, headers=headers)
    assert bad.status_code == 422
    good = await send(build_app("s3cret"), "PUT", "/admin/knobs", json={"size": 3}, headers=headers)
    assert good.status_code == 200
    assert good.json() == {"size": 3}


async def test_routes_without_the_guard_are_untouched() -> None:
    response = await send(build_app("s3cret"), "POST", "/open", **BAD_JSON)
    assert response.status_code == 422
