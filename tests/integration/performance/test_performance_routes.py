"""The analytics service's performance API on a real app (real database for its lifespan)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.analytics.app import create_app
from services.analytics.responses import PerformanceHistory
from services.analytics.settings import AnalyticsSettings
from tests.integration.performance.receivers import SlackReceiver

MONITORING_YAML = """
snapshots: {{interval_seconds: 0.1, history_size: 50}}
evaluation: {{interval_seconds: 0.1}}
alerts:
  cooldown_seconds: 0
  slack: {{webhook_url: "{slack}"}}
thresholds:
  - metric: web_vitals.LCP
    statistic: p75
    max: 2500
    unit: ms
    window_seconds: 60
    min_samples: 2
"""


@pytest.fixture
async def client(
    database_url: str, tmp_path: Path, slack_receiver: SlackReceiver
) -> AsyncIterator[httpx.AsyncClient]:
    config = tmp_path / "monitoring.yaml"
    config.write_text(MONITORING_YAML.format(slack=slack_receiver.url))
    settings = AnalyticsSettings(
        DATABASE_URL=database_url, MONITORING_CONFIG=config, TRACING_ENABLED=False, ANALYTICS_MAX_WORKERS=1
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://analytics") as http:
            yield http


async def test_vitals_are_rated_stored_and_shown_in_summary_and_metrics(client: httpx.AsyncClient) -> None:
    one = await client.post("/api/v1/performance/vitals", json={"name": "CLS", "value": 0.3, "page": "/x"})
    assert one.status_code == 202, one.text
    assert one.json() == {"accepted": 1, "ratings": [{"name": "CLS", "rating": "poor"}]}

    batch = [
        {"name": "LCP", "value": 1800, "page": "/dashboard/performance", "id": "v5-1", "delta": 1800},
        {"name": "TTFB", "value": 900, "page": "/dashboard/performance", "navigationType": "navigate"},
    ]
    # navigator.sendBeacon posts strings as text/plain: accepted all the same.
    response = await client.post(
        "/api/v1/performance/vitals",
        content=httpx.Request("POST", "/", json=batch).content,
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 202, response.text
    assert [r["rating"] for r in response.json()["ratings"]] == ["good", "needs-improvement"]

    summary = (await client.get("/api/v1/performance/summary")).json()
    assert summary["operations"]["web_vitals.LCP"]["count"] >= 1
    assert summary["operations"]["web_vitals.LCP"]["max"] >= 1.8
    assert summary["resources"]["rss_bytes"] > 0

    metrics = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    ratings = {(s.labels["name"], s.labels["rating"]) for s in families["web_vitals_ratings"].samples}
    assert {("CLS", "poor"), ("LCP", "good"), ("TTFB", "needs-improvement")} <= ratings
    counts = {
        s.labels["operation"]: s.value
        for s in families["performance_operation"].samples
        if s.name == "performance_operation_count"
    }
    assert counts["web_vitals.LCP"] == summary["operations"]["web_vitals.LCP"]["count"]

    vitals = (await client.get("/api/v1/performance/vitals")).json()
    assert vitals["CLS"]["rating"] == "poor"


async def test_bad_reports_get_a_clear_4xx(client: httpx.AsyncClient) -> None:
    bad_name = await client.post("/api/v1/performance/vitals", json={"name": "FID", "value": 3})
    assert bad_name.status_code == 422
    assert bad_name.json()["error"]["code"] == "validation_error"
    assert "name" in bad_name.json()["error"]["message"]
    negative = await client.post("/api/v1/performance/vitals", json=[{"name": "LCP", "value": -1}])
    assert negative.status_code == 422
    assert "0.value" in negative.json()["error"]["message"]
    not_json = await client.post("/api/v1/performance/vitals", content=b"{nope")
    assert not_json.status_code == 400
    assert not_json.json()["error"]["message"].startswith("body is not JSON")
    too_many = await client.post("/api/v1/performance/ui", json=[{"frame_time_ms": 16}] * 1001)
    assert too_many.status_code == 413
    bad_ui = await client.post("/api/v1/performance/ui", json={"callback": "a b", "duration_s": 1})
    assert bad_ui.status_code == 422
    bad_format = await client.get("/api/v1/performance/history?format=xml")
    assert bad_format.status_code == 422
    # Found by fuzzing: a value near the float maximum overflowed the histogram (500), and
    # `false` or "3" passed as numbers.
    for value in (1.7976931348623157e308, False, "3"):
        odd = await client.post("/api/v1/performance/vitals", json=[{"name": "LCP", "value": value}])
        assert odd.status_code == 422, value
    flag = await client.post("/api/v1/performance/ui", json={"callback": "x", "duration_s": True})
    assert flag.status_code == 422


async def test_ui_batches_reach_the_ui_monitor(client: httpx.AsyncClient) -> None:
    body = [{"frame_time_ms": 16.7}, {"frame_time_ms": 70}, {"callback": "refresh", "duration_s": 0.12}]
    response = await client.post("/api/v1/performance/ui", json=body)
    assert response.json() == {"accepted": 3, "frames": 2, "callbacks": 1}
    ui = (await client.get("/api/v1/performance/ui")).json()
    assert ui["frames"]["total"] >= 2
    assert ui["frames"]["jank_frames"] >= 1
    assert ui["callbacks"]["refresh"]["max"] >= 0.12
    summary = (await client.get("/api/v1/performance/summary")).json()
    assert summary["operations"]["ui.callback.refresh"]["count"] >= 1


async def test_background_snapshots_are_exported_as_json_and_csv(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/performance/ui", json={"callback": "export_probe", "duration_s": 0.5})
    await asyncio.sleep(0.5)
    history = (await client.get("/api/v1/performance/history")).json()
    PerformanceHistory.model_validate(history)  # the shape the OpenAPI document declares
    assert history["snapshot_interval_s"] == 0.1
    assert history["history_size"] == 50
    assert len(history["history"]) >= 2
    assert any("ui.callback.export_probe" in h["operations"] for h in history["history"])
    response = await client.get("/api/v1/performance/history", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) >= 2
    probe = [r for r in rows if r["operation"] == "ui.callback.export_probe"]
    assert probe
    assert float(probe[0]["max"]) == pytest.approx(0.5)


async def test_poor_vitals_posted_over_http_raise_a_slack_alert(
    client: httpx.AsyncClient, slack_receiver: SlackReceiver
) -> None:
    await client.post("/api/v1/performance/vitals", json=[{"name": "LCP", "value": 6100}] * 3)
    for _ in range(50):
        if slack_receiver.messages:
            break
        await asyncio.sleep(0.05)
    assert slack_receiver.messages, "no alert arrived"
    assert slack_receiver.messages[0]["text"].startswith("[FIRING] web_vitals.LCP p75 on analytics")
    alerts = (await client.get("/api/v1/performance/alerts")).json()
    assert alerts["alerts"][0]["status"] == "firing"
    assert alerts["alerts"][0]["delivered"] == ["slack"]
    assert alerts["thresholds"][0]["failing"] is True
    assert alerts["channels"] == ["slack"]


@pytest.mark.parametrize("path", ["/api/v1/performance/vitals", "/api/v1/performance/ui"])
async def test_oversized_beacons_are_refused_while_they_stream(client: httpx.AsyncClient, path: str) -> None:
    sent = 0
    piece = b" " * 65536

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"["
        for _ in range(160):  # 10 MiB of whitespace offered; the limit is 256 KiB
            sent += len(piece)
            yield piece
        yield b"]"

    streamed = await client.post(path, content=endless())
    assert streamed.status_code == 413
    assert streamed.json()["error"]["details"] == {"max_bytes": 256 * 1024}
    assert sent <= 256 * 1024 + len(piece)
    declared = await client.post(path, content=b"[]", headers={"content-length": str(10 << 20)})
    assert declared.status_code == 413
