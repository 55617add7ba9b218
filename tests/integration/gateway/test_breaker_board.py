"""`GET /breaker` is the fleet's board: the gateway's breakers in use and every upstream's own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.breaker import CircuitBreakerOpen, get_breaker_registry
from shared.service_app import create_service_app
from shared.settings import FleetSettings
from tests.integration.gateway.conftest import serving, write_breakers, write_routes
from tools.dev.embedded import free_port

pytestmark = pytest.mark.integration

SHAPE = ("state", "open", "half_open", "closed")


@contextlib.asynccontextmanager
async def hung_server() -> AsyncIterator[str]:
    """Accepts connections and never answers: a service stuck in a long GC or a deadlock."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_board_lists_breakers_in_use_and_each_service_or_unreachable(tmp_path: Path) -> None:
    # The stand-in analytics is a real service app with its own breaker file; one breaker in use
    # and opened by failures, the other named in its file but never used.
    analytics_dir = tmp_path / "analytics"
    analytics_dir.mkdir()
    analytics_file = write_breakers(
        analytics_dir, database={"failure_threshold": 2, "wait_duration_in_open_state": 60}, redis={}
    )
    registry = get_breaker_registry(analytics_file)
    database = registry.get("database")
    for _ in range(3):
        with contextlib.suppress(ConnectionError, CircuitBreakerOpen):
            await database.call(_fail)
    analytics_app = create_service_app(
        service="analytics",
        version="0.0.0",
        settings=FleetSettings(CIRCUIT_BREAKER_CONFIG=analytics_file, TRACING_ENABLED=False),
    )
    gateway_dir = tmp_path / "gateway"
    gateway_dir.mkdir()
    async with serving(analytics_app) as analytics, hung_server() as hung:
        settings = GatewaySettings(
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
            GATEWAY_RUN_EVENT_PROCESSOR=False,
            TRACING_ENABLED=False,
            ANALYTICS_URL=analytics.url,
            OPTIMIZER_URL=hung,
            REPLICATOR_URL=f"http://127.0.0.1:{free_port()}",
            EVENT_PROCESSOR_URL=f"http://127.0.0.1:{free_port()}",
            BREAKER_BOARD_TIMEOUT_S=0.5,
            CIRCUIT_BREAKER_CONFIG=write_breakers(
                gateway_dir, analytics={}, kafka={}, redis={}, replication_source={}, external_api={}
            ),
            GATEWAY_ROUTES_CONFIG=write_routes(gateway_dir, "analytics_url"),
        )
        async with (
            serving(create_app(settings)) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        ):
            started = time.monotonic()
            board = (await client.get("/breaker")).json()
            took = time.monotonic() - started

    services = board.pop("services")
    # Only what the gateway calls through: the proxy's route breaker and Kafka for ingestion.
    assert set(board) == {"analytics", "kafka"}
    for snapshot in board.values():
        assert all(key in snapshot for key in SHAPE)
    # Each upstream under its name; the hung and the absent ones are reported, not omitted,
    # and the hung one costs at most the board's timeout (asked concurrently).
    assert set(services) == {"analytics", "optimizer", "replicator", "event_processor"}
    assert set(services["analytics"]) == {"database"}
    assert services["analytics"]["database"]["state"] == "open"
    assert services["analytics"]["database"]["open"] == 1
    assert all(key in services["analytics"]["database"] for key in SHAPE)
    assert services["optimizer"] == {"unreachable": True, "reason": "no answer within 0.5 s"}
    for absent in ("replicator", "event_processor"):
        assert services[absent]["unreachable"] is True
        assert services[absent]["reason"].startswith("connection failed")
    assert took < 2.0, took


@contextlib.asynccontextmanager
async def wrong_shape_server(body: bytes) -> AsyncIterator[str]:
    """Answers every request 200 with `body`: a service of another version, or a hostile one."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"db": {"state": "sideways"}}', "not a list of breakers"),
        (b'{"db": 1}', "not a list of breakers"),
        (b"[1, 2]", "not a list of breakers"),
        (b"\xff\xfe{", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not"),
    ],
)
async def test_an_upstream_answer_of_the_wrong_shape_is_reported_never_a_500(
    tmp_path: Path, body: bytes, reason: str
) -> None:
    async with wrong_shape_server(body) as odd:
        settings = GatewaySettings(
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
            GATEWAY_RUN_EVENT_PROCESSOR=False,
            TRACING_ENABLED=False,
            ANALYTICS_URL=odd,
            OPTIMIZER_URL=odd,
            REPLICATOR_URL=odd,
            EVENT_PROCESSOR_URL=odd,
            BREAKER_BOARD_TIMEOUT_S=2,
            CIRCUIT_BREAKER_CONFIG=write_breakers(tmp_path, analytics={}, kafka={}),
            GATEWAY_ROUTES_CONFIG=write_routes(tmp_path, "analytics_url"),
        )
        async with (
            serving(create_app(settings)) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        ):
            answer = await client.get("/breaker")
    assert answer.status_code == 200, answer.text
    for service in answer.json()["services"].values():
        assert service["unreachable"] is True
        assert reason in service["reason"]


async def _fail() -> None:
    raise ConnectionError("refused")
