"""The live performance page in a real headless Chromium against real service processes.

It must load without console errors, show the numbers that /metrics and /breaker give at that
moment, report its own Core Web Vitals and frame times to the analytics service, and keep
working per section when a service goes down. A screenshot is left in test-artifacts/.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import REPO_ROOT
from tests.factories import event_dict
from tests.integration.performance.receivers import SlackReceiver, slack_receiver
from tools.dev.fleet import ServiceProcess, service_env
from tools.dev.servers import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
EVENTS = 25

pytestmark = pytest.mark.e2e
__all__ = ["slack_receiver"]  # the fixture, shared with the alert tests


@pytest.fixture
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        unavailable("Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


# Any page load breaches this threshold, so the alert path runs end to end in real processes.
MONITORING_YAML = """
evaluation: {{interval_seconds: 0.5}}
alerts:
  slack: {{webhook_url: "{slack}"}}
thresholds:
  - metric: web_vitals.TTFB
    statistic: max
    max: 0
    unit: ms
    window_seconds: 300
    description: every page load breaches this test threshold
"""


@pytest.fixture
def fleet(
    database_url: str,
    replica_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    tmp_path: Path,
    slack_receiver: SlackReceiver,
    start_service: Callable[..., ServiceProcess],
) -> dict[str, ServiceProcess]:
    monitoring = tmp_path / "monitoring.yaml"
    monitoring.write_text(MONITORING_YAML.format(slack=slack_receiver.url))
    env = {
        "MONITORING_CONFIG": str(monitoring),
        **service_env(database_url, kafka_bootstrap, topic_name),
        "TIMESCALE_URL": replica_url,
        "ANALYTICS_MAX_WORKERS": "1",
        "PERFORMANCE_SNAPSHOT_INTERVAL": "1",
    }
    analytics = start_service("services.analytics", env, wait_ready=True)
    optimizer = start_service("services.optimizer", env, wait_ready=True)
    replicator = start_service("services.replicator", env, wait_ready=True)
    urls = {"ANALYTICS_URL": analytics.url, "OPTIMIZER_URL": optimizer.url, "REPLICATOR_URL": replicator.url}
    gateway = start_service("services.gateway", {**env, **urls}, wait_ready=True)
    return {"gateway": gateway, "analytics": analytics, "optimizer": optimizer, "replicator": replicator}


def metric_samples(url: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def quantile_from_buckets(q: float, buckets: list[tuple[float, float]]) -> float:
    """histogram_quantile, written out again here so the test does not trust the page's own code."""
    buckets = sorted(buckets)
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    raise AssertionError("no bucket reached the rank")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout_s}s")


def page_values(page: Any) -> dict[str, str]:
    values: dict[str, str] = page.eval_on_selector_all(
        "[data-metric]", "els => Object.fromEntries(els.map(e => [e.dataset.metric, e.dataset.value]))"
    )
    return values


def wait_for_refresh(page: Any, after: float) -> None:
    """Until the page shows data generated after `after` (epoch seconds)."""
    page.wait_for_function(
        "after => Number(document.getElementById('status').dataset.updated || 0) > after",
        arg=after,
        timeout=15_000,
    )


def test_page_agrees_with_metrics_and_breakers_and_reports_its_vitals(
    fleet: dict[str, ServiceProcess], browser: Any, slack_receiver: SlackReceiver
) -> None:
    gateway, analytics = fleet["gateway"], fleet["analytics"]
    now = datetime.now(UTC)
    # Recent timestamps, so the event-time delay histogram has figures inside its buckets too.
    events = [
        event_dict(door_id=f"door-{i % 3}", timestamp=(now - timedelta(milliseconds=40 * i)).isoformat())
        for i in range(EVENTS)
    ]
    assert httpx.post(gateway.url + "/api/v1/events", json=events, timeout=10).status_code == 202

    def processed() -> float:
        samples = metric_samples(gateway.url).get("event_processor_events_processed_total", [])
        return sum(s.value for s in samples)

    wait_for(lambda: processed() >= EVENTS, 20, "events stored")
    # Some traffic through the analytics proxy, so the analytics breaker has calls in its window.
    for _ in range(3):
        httpx.get(gateway.url + "/api/v1/analytics/summary", timeout=10)

    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    response = page.goto(gateway.url + "/dashboard/performance?refresh=1000", wait_until="load")
    assert response is not None
    assert response.status == 200
    page.wait_for_selector("#status[data-state='ok']", timeout=15_000)

    # What /metrics and /breaker say now; the traffic has stopped, so the page's next refresh
    # must show the same figures.
    wait_for(
        lambda: (
            sum(s.value for s in metric_samples(fleet["replicator"].url).get("replication_rows_total", []))
            >= EVENTS
        ),
        20,
        "replication",
    )
    samples = metric_samples(gateway.url)
    optimizer = httpx.get(fleet["optimizer"].url + "/api/v1/optimizer/status", timeout=5).json()
    cache_tiers = httpx.get(analytics.url + "/api/v1/cache/report", timeout=5).json()["tiers"]
    replication = metric_samples(fleet["replicator"].url)
    breakers = httpx.get(gateway.url + "/breaker", timeout=5).json()
    breakers.pop("services")  # the upstream services' breakers: the board's own part, not the page's
    assert breakers, "the gateway has no breakers"
    wait_for_refresh(page, time.time())
    shown = page_values(page)

    assert float(shown["events.processed_total"]) == sum(
        s.value for s in samples["event_processor_events_processed_total"]
    )
    buckets = [(float(s.labels["le"]), s.value) for s in samples["event_processor_latency_seconds_bucket"]]
    for q in (0.5, 0.95, 0.99):
        assert float(shown[f"events.latency.p{round(q * 100)}"]) == pytest.approx(
            quantile_from_buckets(q, buckets)
        )
    # Background callers (the optimizer, the page's own polls) may add a call to a breaker's
    # window between the read above and the page's refresh: the page must show a value between
    # the two reads. Transition counts do not move without a fault, so they must be equal.
    after = httpx.get(gateway.url + "/breaker", timeout=5).json()
    for name, b in breakers.items():
        assert shown[f"breaker.{name}.state"] == b["state"], name
        for key in ("open", "half_open", "closed"):
            assert float(shown[f"breaker.{name}.{key}"]) == b[key], (name, key)
        low, high = sorted((b["calls_in_window"], after[name]["calls_in_window"]))
        assert low <= float(shown[f"breaker.{name}.calls_in_window"]) <= high, name
    for tier, t in cache_tiers.items():
        if t["hits"] + t["misses"]:
            assert float(shown[f"cache.{tier}.hit_ratio"]) == pytest.approx(
                t["hits"] / (t["hits"] + t["misses"])
            )
    assert "cache.l1.hit_ratio" in shown  # the analytics reads above went through the L1 tier
    knobs = [
        (svc, name, knob) for svc, e in optimizer["services"].items() for name, knob in e["settings"].items()
    ]
    assert knobs, optimizer
    for svc, name, knob in knobs:
        assert float(shown[f"optimizer.{svc}.{name}"]) == knob["value"], (svc, name)
    visible = page.inner_text("#breakers")
    assert all(name in visible for name in breakers)
    assert float(shown["requests.gateway.count"]) >= 3
    assert "requests.analytics.p95" in shown
    assert float(shown["replication.rows_total"]) == sum(
        s.value for s in replication["replication_rows_total"]
    )
    assert float(shown["replication.backlog_seconds"]) == replication["replication_backlog_seconds"][0].value
    assert "events / s" in page.inner_text("#events")

    # The fleet's slowest operations: each row is an operation its service really times, the
    # rows come from more than one service and are ordered by p95.
    slowest = page.eval_on_selector_all(
        "[data-metric^='ops.'][data-metric$='.name']", "els => els.map(e => e.dataset.value)"
    )
    assert slowest, "no operations shown"
    for row in slowest:
        service, operation = row.split("|", 1)
        timed = {
            s.labels["operation"] for s in metric_samples(fleet[service].url)["performance_operation_count"]
        }
        assert operation in timed, (service, operation)
    assert len({row.split("|", 1)[0] for row in slowest}) >= 2, slowest
    p95s = [float(shown[f"ops.{i}.p95"]) for i in range(len(slowest))]
    assert p95s == sorted(p95s, reverse=True)

    # Trends: each plot gains a point per refresh; the last point is the figure shown.
    wait_for_refresh(page, time.time())
    points = page.eval_on_selector_all(
        "svg[data-trend]",
        "els => Object.fromEntries(els.map(e => [e.dataset.trend, Number(e.dataset.points)]))",
    )
    assert set(points) == {"events", "latency", "requests", "backlog", "breakers"}
    assert points["events"] >= 2
    assert points["backlog"] >= 2
    now_shown = page_values(page)
    assert now_shown["trend.events.last"] == now_shown["events.per_second"]
    assert now_shown["trend.backlog.last"] == now_shown["replication.backlog_seconds"]
    assert page.eval_on_selector_all("link[href^='http'], script[src^='http']", "els => els.length") == 0
    # Caught up: a backlog of zero reads "0 s", not "0 µs".
    assert float(now_shown["replication.backlog_seconds"]) == 0
    replication_text = page.inner_text("#replication")
    assert "0 s" in replication_text
    assert "µs" not in replication_text

    # Under a steady 20 events/s the page reads about 20 events/s (not 0.0).
    stop = threading.Event()

    def feed() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                live = datetime.now(UTC).isoformat()
                client.post(
                    gateway.url + "/api/v1/events", json=[event_dict(timestamp=live) for _ in range(10)]
                )
                stop.wait(0.5)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(3)
        readings = []
        for _ in range(3):
            wait_for_refresh(page, time.time())
            readings.append(float(page_values(page)["events.per_second"] or 0))
    finally:
        stop.set()
        feeder.join(timeout=15)
    assert 8 <= max(readings) <= 40, readings

    # The page's own vitals and frame times arrive at the analytics service through the gateway.
    def vitals_arrived() -> dict[str, Any] | None:
        ops = httpx.get(analytics.url + "/api/v1/performance/summary", timeout=5).json()["operations"]
        return ops if {"web_vitals.TTFB", "web_vitals.FCP"} <= set(ops) else None

    ops = wait_for(vitals_arrived, 15, "web-vitals beacons")
    assert ops["web_vitals.TTFB"]["count"] >= 1
    assert 0 < ops["web_vitals.FCP"]["max"] < 30  # seconds
    ui = wait_for(
        lambda: (
            (r := httpx.get(analytics.url + "/api/v1/performance/ui", timeout=5).json())["frames"]["total"]
            and r
        ),
        15,
        "frame times",
    )
    assert ui["frames"]["recent"]["p50"] > 0
    assert ui["callbacks"]["dashboard.refresh"]["count"] >= 1
    vitals_view = httpx.get(analytics.url + "/api/v1/performance/vitals", timeout=5).json()
    assert vitals_view["FCP"]["rating"] in {"good", "needs-improvement", "poor"}

    # The page's TTFB breached the threshold: Slack hears it from the analytics process, and the
    # page lists the alert at its next refresh.
    wait_for(lambda: slack_receiver.messages, 15, "the Slack alert")
    assert slack_receiver.messages[0]["text"].startswith("[FIRING] web_vitals.TTFB max on analytics")
    page.wait_for_function(
        "() => document.querySelector('[data-metric=\"alerts.failing\"]')?.dataset.value === '1'",
        timeout=15_000,
    )
    alerts_text = page.inner_text("#alerts")
    assert "firing" in alerts_text
    assert "web_vitals.TTFB max is" in alerts_text
    assert "channels: slack" in alerts_text

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "performance-page.png"), full_page=True)
    # Leaving the page makes LCP and CLS final; they go out with sendBeacon as the page hides.
    page.close(run_before_unload=True)
    final = wait_for(
        lambda: (o := vitals_arrived()) and {"web_vitals.LCP", "web_vitals.CLS"} <= set(o) and o,
        15,
        "LCP and CLS beacons sent on leaving the page",
    )
    assert final["web_vitals.LCP"]["count"] == 1
    assert final["web_vitals.CLS"]["unit"] == "score"
    context.close()
    assert errors == []


def test_sections_degrade_one_by_one_when_a_service_is_down(
    fleet: dict[str, ServiceProcess], browser: Any
) -> None:
    gateway = fleet["gateway"]
    fleet["replicator"].stop()
    fleet["optimizer"].stop()

    page_errors: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.goto(gateway.url + "/dashboard/performance?refresh=1000")
    page.wait_for_selector("#status[data-state='ok']", timeout=15_000)
    wait_for_refresh(page, time.time())

    down = page.eval_on_selector_all("[data-down]", "els => els.map(e => e.dataset.down)")
    assert {"replication", "optimizer", "requests.replicator", "requests.optimizer"} <= set(down)
    assert "unavailable" in page.inner_text("#replication")
    # Everything else still shows live figures.
    shown = page_values(page)
    assert "events.processed_total" in shown
    assert any(key.startswith("breaker.") for key in shown)
    assert "requests.analytics.count" in shown
    page.screenshot(path=str(ARTIFACTS / "performance-page-degraded.png"), full_page=True)
    page.close()
    assert page_errors == []
