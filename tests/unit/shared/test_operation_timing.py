"""Every app of the factory times its routes and judges the thresholds of monitoring.yaml itself."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.performance.monitor import PerformanceMonitor, get_performance_monitor
from shared.performance.operation import named_operation, operation
from shared.service_app import create_service_app
from shared.settings import FleetSettings


@pytest.fixture
def webhook() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    received.append({"url": f"http://127.0.0.1:{server.server_address[1]}/hook"})
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


async def test_routes_are_timed_by_template_and_a_threshold_on_one_fires(
    tmp_path: Path, webhook: list[dict[str, Any]]
) -> None:
    url = webhook.pop(0)["url"]
    config = tmp_path / "monitoring.yaml"
    config.write_text(
        "evaluation: {interval_seconds: 0.05}\n"
        f"alerts: {{cooldown_seconds: 0, slack: {{webhook_url: '{url}'}}}}\n"
        "thresholds:\n"
        "  - {metric: 'http.GET /orders/{order_id}', statistic: max, max: 0.05, min_samples: 1}\n"
    )
    app = create_service_app(
        service="probe",
        version="0.0.1",
        settings=FleetSettings(MONITORING_CONFIG=config, TRACING_ENABLED=False),
    )

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        await asyncio.sleep(0.08 if order_id == 2 else 0)
        return {"id": order_id}

    monitor = get_performance_monitor()
    before = monitor.operation_stats()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as http,
    ):
        assert (await http.get("/orders/1")).status_code == 200
        assert (await http.get("/orders/x")).status_code == 422
        assert (await http.get("/random/../path")).status_code == 404
        await http.get("/metrics")
        assert (await http.get("/orders/2")).status_code == 200
        for _ in range(60):
            if webhook:
                break
            await asyncio.sleep(0.05)
    stats = monitor.operation_stats()

    def added(name: str) -> int:
        old = before.get(name)
        return stats[name].count - (old.count if old else 0)

    # One name per route template, not per id; unmatched paths share one name; /metrics is not timed.
    assert added("http.GET /orders/{order_id}") == 3
    assert added("http.GET <unmatched>") == 1
    assert "http.GET /metrics" not in stats
    assert webhook, "the threshold on the route did not fire"
    assert webhook[0]["text"].startswith("[FIRING] http.GET /orders/{order_id} max on probe")


async def test_operation_times_sync_blocks_and_named_async_functions() -> None:
    monitor = get_performance_monitor()
    seen: list[float] = []
    monitor.watch("unit.named", seen.append)
    try:

        @named_operation("unit.named")
        async def query() -> int:
            await asyncio.sleep(0.01)
            return 7

        assert await query() == 7
        with pytest.raises(RuntimeError), operation("unit.block"):
            raise RuntimeError("recorded anyway")
    finally:
        monitor.unwatch("unit.named")
    assert len(seen) == 1
    assert seen[0] >= 0.009
    stats = monitor.operation_stats()
    assert stats["unit.block"].count >= 1


def test_watchers_see_only_their_operation_and_can_be_removed() -> None:
    monitor = PerformanceMonitor()
    seen: list[float] = []
    monitor.watch("a", seen.append)
    monitor.record("a", 1.0)
    monitor.record("b", 2.0)
    monitor.unwatch("a")
    monitor.record("a", 3.0)
    assert seen == [1.0]
