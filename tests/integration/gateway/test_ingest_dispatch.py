"""The ingest route's fast path (`IngestDispatch`) answers exactly what the declared route answers.

The same requests go to a gateway with the dispatcher and to one without it (the router then
runs the declared FastAPI route); every answer must be the same: status, body, and the headers
a client acts on. With the dispatcher the router's route never runs, and the request is still
named by its route in the HTTP metrics.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from services.gateway.app import create_app
from services.gateway.ingest import IngestDispatch
from shared.api_keys import _scheme
from tests.factories import event_dict
from tests.hostile import hostile_messages
from tests.integration.gateway.conftest import serving
from tests.integration.gateway.test_ingest import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_HEADERS = (
    "content-type",
    "retry-after",
    "www-authenticate",
    "allow",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
)


def _without_dispatch(app: FastAPI) -> FastAPI:
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not IngestDispatch]
    return app


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 1000 + 1):
        yield b" " * 1000


def _requests() -> list[dict[str, Any]]:
    key = {"x-api-key": "alpha"}
    good = [event_dict(event_id=f"same-{n}", door_id=f"d{n}") for n in range(3)]
    requests: list[dict[str, Any]] = [
        {"json": good},
        {"json": good, "headers": {"x-api-key": "gamma"}},
        {"json": good, "headers": key},
        {"json": good[0], "headers": key},
        {"json": [good[0], event_dict(access_result="Perhaps"), 7], "headers": key},
        {"content": b"{not json", "headers": key},
        {"content": b"", "headers": key},
        {"json": [], "headers": key},
        {"json": good * 2, "headers": key},
        {"content": b"[" + b" " * 9000 + b"]", "headers": key},
        {"chunks": 9000, "headers": key},  # a chunked body, made anew for each app
        {"method": "GET", "headers": key},
        {"method": "PUT", "json": good, "headers": key},
        {"path": "/api/v1/events/", "json": good, "headers": key},
    ]
    for message in hostile_messages():
        requests.append(
            {"content": message.value or b"", "headers": {**key, "content-type": "application/json"}}
        )
    return requests


def _limited() -> list[dict[str, Any]]:
    """Until the budgets are spent: the quota headers, then 429 for requests and for events."""
    key = {"x-api-key": "beta"}
    return [
        {"json": [event_dict()] * 2, "headers": key},
        {"json": [event_dict()] * 3, "headers": key},
        {"json": event_dict(), "headers": key},
    ]


def _timeless(body: Any, headers: dict[str, str | None]) -> Any:
    """A 429 without the seconds to wait, which depend on when in the window it came."""
    if isinstance(body, dict) and isinstance(body.get("error", {}).get("details"), dict):
        body["error"]["details"].pop("retry_after", None)
        body["error"]["message"] = re.sub(r"retry in \d+s", "retry in Ns", body["error"]["message"])
        headers["retry-after"] = "N" if headers.get("retry-after") else None
    return body


async def _answers(app: FastAPI, requests: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    answers = []
    async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        for request in requests:
            response = await client.request(
                request.get("method", "POST"),
                request.get("path", "/api/v1/events"),
                json=request.get("json"),
                content=_chunks(request["chunks"]) if "chunks" in request else request.get("content"),
                headers=request.get("headers"),
            )
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            headers = {name: response.headers.get(name) for name in _HEADERS}
            body = _timeless(body, headers)
            answers.append((response.status_code, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), headers))
    return answers


async def test_the_dispatcher_answers_every_request_as_the_declared_route_does(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    def app(**limits: Any) -> FastAPI:
        return create_app(
            settings_for(
                tmp_path,
                kafka_bootstrap,
                topic_name,
                MAX_EVENTS_PER_REQUEST=5,
                MAX_REQUEST_BYTES=8192,
                API_KEYS="alpha, beta",
                **limits,
            )
        )

    limits = {"INGEST_RATE_LIMIT": "2/minute", "INGEST_EVENTS_RATE_LIMIT": "4/minute"}
    # The same bodies for both: a refusal's reason may name a position in the body.
    requests, limited = _requests(), _limited()
    with_dispatch = await _answers(app(), requests)
    with_dispatch += await _answers(app(**limits), limited)
    through_router = await _answers(_without_dispatch(app()), requests)
    through_router += await _answers(_without_dispatch(app(**limits)), limited)
    assert [a[0] for a in with_dispatch] == [a[0] for a in through_router]
    for index, (dispatched, routed) in enumerate(zip(with_dispatch, through_router, strict=True)):
        assert dispatched == routed, index
    statuses = [a[0] for a in with_dispatch]
    assert {202, 400, 401, 403, 405, 413, 422, 429} <= set(statuses)
    assert statuses[-3:] == [202, 429, 429]
    assert not any(status >= 500 for status in statuses)


async def test_with_the_dispatcher_the_router_never_runs_and_the_route_is_named(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    async def _never_the_router() -> None:
        raise AssertionError("the router's ingest route ran: the dispatcher did not answer")

    app = create_app(settings_for(tmp_path, kafka_bootstrap, topic_name))
    # The declared route's only dependency: solving it means the router took the request.
    app.dependency_overrides[_scheme] = _never_the_router
    async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        accepted = await client.post("/api/v1/events", json=[event_dict(), event_dict()])
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"accepted": 2}
        assert accepted.headers["x-request-id"]
        refused = await client.post("/api/v1/events", json=[event_dict(person_id="")])
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_events"
    metrics = generate_latest(app.state.http_metrics_registry).decode()
    for status in ("202", "422"):
        assert any(
            'handler="/api/v1/events"' in line and f'status="{status}"' in line and 'method="POST"' in line
            for line in metrics.splitlines()
        ), status
