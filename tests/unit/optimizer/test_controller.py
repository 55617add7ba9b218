"""The optimizer's window arithmetic and controller rules, on hand-made signals."""

from __future__ import annotations

import pytest

from services.optimizer.controller import Controller, ControllerConfig, Knob
from services.optimizer.scrape import Scrape, Window, bucket_quantile
from services.optimizer.signals import Signals, analytics_signals, processor_signals

METRICS_BEFORE = """
# TYPE http_requests_total counter
http_requests_total{handler="/api/v1/analytics/summary",method="GET",status="200"} 100
http_requests_total{handler="/api/v1/uploads",method="POST",status="201"} 4
http_requests_total{handler="/metrics",method="GET",status="200"} 50
# TYPE http_request_duration_highr_seconds histogram
http_request_duration_highr_seconds_bucket{le="0.1"} 90
http_request_duration_highr_seconds_bucket{le="0.5"} 100
http_request_duration_highr_seconds_bucket{le="1.0"} 104
http_request_duration_highr_seconds_bucket{le="+Inf"} 104
http_request_duration_highr_seconds_count 104
http_request_duration_highr_seconds_sum 10
# TYPE cache_hits_total counter
cache_hits_total{cache="summary",tier="l1"} 10
# TYPE cache_misses_total counter
cache_misses_total{cache="summary",tier="l1"} 10
"""

METRICS_AFTER = """
# TYPE http_requests_total counter
http_requests_total{handler="/api/v1/analytics/summary",method="GET",status="200"} 190
http_requests_total{handler="/api/v1/analytics/summary",method="GET",status="500"} 10
http_requests_total{handler="/api/v1/uploads",method="POST",status="201"} 4
http_requests_total{handler="/metrics",method="GET",status="200"} 60
# TYPE http_request_duration_highr_seconds histogram
http_request_duration_highr_seconds_bucket{le="0.1"} 90
http_request_duration_highr_seconds_bucket{le="0.5"} 150
http_request_duration_highr_seconds_bucket{le="1.0"} 204
http_request_duration_highr_seconds_bucket{le="+Inf"} 204
http_request_duration_highr_seconds_count 204
http_request_duration_highr_seconds_sum 60
# TYPE cache_hits_total counter
cache_hits_total{cache="summary",tier="l1"} 30
cache_hits_total{cache="summary",tier="l2"} 0
# TYPE cache_misses_total counter
cache_misses_total{cache="summary",tier="l1"} 70
"""


def test_window_rates_quantiles_and_hit_ratios_from_two_scrapes() -> None:
    window = Window(Scrape.parse(METRICS_BEFORE, at=0.0), Scrape.parse(METRICS_AFTER, at=10.0))
    signals = analytics_signals(window)
    assert signals["request_rate"] == pytest.approx(10.0)  # 100 user requests in 10 s; /metrics excluded
    assert signals["upload_rate"] == 0.0
    assert signals["error_rate"] == pytest.approx(1.0)
    # 100 new observations: 50 in (0.1, 0.5], 50 in (0.5, 1.0]; p95 is 90% into the last bucket.
    assert signals["latency_p95_s"] == pytest.approx(0.5 + 0.5 * 0.9)
    assert signals["cache_hit_ratio:summary"] == pytest.approx(20 / 80)
    assert signals["cache_lookup_rate:summary"] == pytest.approx(8.0)


def test_counter_reset_counts_from_zero_and_missing_metrics_are_none() -> None:
    before = Scrape.parse(
        "# TYPE event_processor_events_processed_total counter\nevent_processor_events_processed_total 500\n",
        at=0,
    )
    after = Scrape.parse(
        "# TYPE event_processor_events_processed_total counter\nevent_processor_events_processed_total 20\n",
        at=2,
    )
    signals = processor_signals(Window(before, after))
    assert signals["events_rate"] == 10.0
    assert signals["batch_mean_records"] is None
    assert signals["store_p95_s"] is None


def test_bucket_quantile_matches_promql() -> None:
    assert bucket_quantile(0.5, [(1.0, 10), (2.0, 20), (float("inf"), 20)]) == 1.0
    assert bucket_quantile(0.75, [(1.0, 10), (2.0, 20), (float("inf"), 20)]) == 1.5
    assert bucket_quantile(0.99, [(1.0, 10), (float("inf"), 20)]) == 1.0  # beyond the last finite bound
    assert bucket_quantile(0.5, [(1.0, 0), (float("inf"), 0)]) is None


def processor_knob(value: float = 1000) -> Knob:
    return Knob("event_processor", "batch_size", value, default=1000, low=1, high=4000)


def full_batches(size: float) -> Signals:
    return Signals(
        services={
            "event_processor": {"events_rate": 5000.0, "batch_mean_records": size, "store_p95_s": 0.05}
        },
        host={"cpu_ratio": 0.3, "memory_ratio": 0.3},
    )


def test_aimd_batch_size_needs_confirmation_respects_cooldown_and_its_ceiling() -> None:
    knob = processor_knob(1000)
    controller = Controller(ControllerConfig(cooldown_s=30, confirmations=2))
    # Full batches at the configured size: growing past it was measured to buy nothing.
    for t in range(5):
        assert controller.decide([knob], full_batches(1000), now=t) == []
    # After a cut (the store was slow), full batches grow back: +half the default per step.
    knob.value = 250
    assert controller.decide([knob], full_batches(250), now=10) == []  # first sighting only
    [decision] = controller.decide([knob], full_batches(250), now=11)
    assert (decision.old, decision.new, decision.rule) == (250, 750, "ai")
    assert "full" in decision.reason
    assert decision.signals["batch_mean_records"] == 250
    knob.value, knob.last_change = decision.new, decision.at
    # Within the cooldown nothing moves, however often the rule fires.
    for t in range(12, 41):
        assert controller.decide([knob], full_batches(750), now=t) == []
    [decision] = controller.decide([knob], full_batches(750), now=42)
    assert decision.new == 1000  # capped at the configured size


def test_slow_store_halves_and_alternating_signals_never_move_the_knob() -> None:
    knob = processor_knob(2000)
    controller = Controller(ControllerConfig(cooldown_s=0, confirmations=2))
    slow = Signals(
        services={
            "event_processor": {"events_rate": 100.0, "batch_mean_records": 2000.0, "store_p95_s": 3.0}
        },
        host={},
    )
    # Full, slow, full, slow...: no rule holds twice in a row, so nothing changes (hysteresis).
    for t in range(10):
        assert controller.decide([knob], slow if t % 2 else full_batches(2000), now=t) == []
    # The last evaluation (t=9) was slow; a second slow one in a row confirms it.
    [decision] = controller.decide([knob], slow, now=20)
    assert (decision.new, decision.rule) == (1000, "md")
    assert "store p95" in decision.reason


def test_analytics_rules_workers_chunks_and_cache_ttl() -> None:
    controller = Controller(ControllerConfig(latency_target_s=0.2, cooldown_s=0, confirmations=1))
    workers = Knob("analytics", "max_workers", 2, default=2, low=1, high=8)
    chunk = Knob("analytics", "chunk_size", 50_000, default=50_000, low=1_000, high=1_000_000)
    ttl = Knob("analytics", "cache_ttl_seconds.summary", 60, default=60, low=1, high=3600, integer=False)
    busy_queries = Signals(
        services={
            "analytics": {
                "request_rate": 40.0,
                "latency_p95_s": 0.8,
                "upload_rate": 0.0,
                "cache_lookup_rate:summary": 30.0,
                "cache_hit_ratio:summary": 0.3,
            }
        },
        host={"cpu_ratio": 0.4, "memory_ratio": 0.3},
    )
    decisions = {d.setting: d for d in controller.decide([workers, chunk, ttl], busy_queries, now=0)}
    assert decisions["max_workers"].new == 3
    assert decisions["cache_ttl_seconds.summary"].new == 120
    assert "chunk_size" not in decisions  # no uploads, already at the default

    uploads = Signals(
        services={"analytics": {"request_rate": 2.0, "latency_p95_s": 0.1, "upload_rate": 0.5}},
        host={"cpu_ratio": 0.95, "memory_ratio": 0.3, "cpu_cores": 2.0},
    )
    ttl.value = 240
    decisions = {d.setting: d for d in controller.decide([workers, chunk, ttl], uploads, now=10)}
    assert "chunk_size" not in decisions  # bigger chunks than configured were measured slower
    assert decisions["cache_ttl_seconds.summary"].new == 60  # data changing: default freshness
    pressure = Signals(services={"analytics": {"memory_ratio": 0.85}}, host={"memory_ratio": 0.5})
    [smaller] = controller.decide([chunk], pressure, now=11)
    assert (smaller.new, smaller.rule) == (25_000, "md")
    chunk.value = smaller.new
    relieved = Signals(services={"analytics": {"memory_ratio": 0.3}}, host={"memory_ratio": 0.3})
    [restored] = controller.decide([chunk], relieved, now=12)
    assert (restored.new, restored.rule) == (50_000, "reset")
    workers.value = 4
    assert {d.setting: d for d in controller.decide([workers], uploads, now=20)}["max_workers"].new == 3


def test_a_busy_host_cuts_only_workers_beyond_the_cores() -> None:
    controller = Controller(ControllerConfig(latency_target_s=0.5, cooldown_s=0, confirmations=1))
    workers = Knob("analytics", "max_workers", 2, default=2, low=1, high=8)

    def busy(cores: float | None) -> Signals:
        host: dict[str, float | None] = {"cpu_ratio": 0.98, "memory_ratio": 0.3, "cpu_cores": cores}
        return Signals(services={"analytics": {"request_rate": 0.0, "upload_rate": 0.0}}, host=host)

    # The host is saturated by something else: two workers on two cores are not the cause.
    assert controller.decide([workers], busy(2.0), now=0) == []
    assert controller.decide([workers], busy(None), now=1) == []  # cores unknown: hold
    workers.value = 6
    [decision] = controller.decide([workers], busy(2.0), now=2)
    assert (decision.new, decision.rule) == (4, "md")
    assert "6 workers on 2 cores" in decision.reason
    workers.value = 3
    [decision] = controller.decide([workers], busy(2.0), now=3)
    assert decision.new == 2  # never below the cores


def test_events_flowing_again_restore_the_flush_interval_at_once() -> None:
    controller = Controller(ControllerConfig(cooldown_s=30, confirmations=3))
    knob = Knob("event_processor", "flush_interval_ms", 50, default=50, low=1, high=10_000)

    def rate(events: float) -> Signals:
        return Signals(services={"event_processor": {"events_rate": events}}, host={})

    # Going idle is an ordinary decision: it needs three idle windows in a row.
    assert controller.decide([knob], rate(0), now=0) == []
    assert controller.decide([knob], rate(0), now=1) == []
    [idle] = controller.decide([knob], rate(0), now=2)
    assert (idle.new, idle.rule) == (500, "idle")
    knob.value, knob.last_change = idle.new, idle.at
    # A burst starts one second later: back to the default in the same evaluation, although
    # the knob is in its cooldown and the rule has fired only once.
    [busy] = controller.decide([knob], rate(5_000), now=3)
    assert (busy.old, busy.new, busy.rule) == (500, 50, "busy")


def test_replication_yields_to_writes_within_the_backlog_budget() -> None:
    controller = Controller(ControllerConfig(cooldown_s=30, confirmations=2, replication_backlog_budget_s=60))
    knob = Knob("replicator", "interval_seconds", 1.0, default=1.0, low=0.05, high=3600, integer=False)

    def load(cpu: float, events: float, uploads: float, backlog: float) -> Signals:
        return Signals(
            services={
                "replicator": {"backlog_seconds": backlog, "rows_rate": 1000.0},
                "event_processor": {"events_rate": events},
                "analytics": {"upload_rate": uploads},
            },
            host={"cpu_ratio": cpu},
        )

    # A busy host with no write burst (queries, a trickle of events, another tenant):
    # replication is not in anyone's way.
    assert controller.decide([knob], load(0.97, 0, 0, 0.5), now=0) == []
    assert controller.decide([knob], load(0.97, 200, 0, 0.5), now=1) == []
    # A burst on an idle host: nothing to yield to either.
    assert controller.decide([knob], load(0.3, 20_000, 0, 0.5), now=1.5) == []
    assert controller.decide([knob], load(0.3, 20_000, 0, 0.5), now=1.7) == []
    # Writes flowing on a saturated host: defer, after a confirmation.
    assert controller.decide([knob], load(0.97, 20_000, 0, 0.5), now=2) == []
    [defer] = controller.decide([knob], load(0.97, 20_000, 0, 0.8), now=3)
    assert (defer.old, defer.new, defer.rule) == (1.0, 30.0, "defer")
    assert "20000 events/s" in defer.reason
    assert "of a 60s budget" in defer.reason
    assert defer.signals["host.fleet.events_rate"] == 20_000
    assert defer.signals["backlog_seconds"] == 0.8
    knob.value, knob.last_change = defer.new, defer.at
    # Still busy, backlog growing but under half the budget: hold.
    assert controller.decide([knob], load(0.95, 0, 0.5, 12.0), now=4) == []
    # Half the budget reached while still busy: back to the default at once (no confirmation,
    # inside the cooldown).
    [resume] = controller.decide([knob], load(0.95, 0, 0.5, 31.0), now=5)
    assert (resume.new, resume.rule) == (1.0, "resume")
    assert "half its 60s budget" in resume.reason
    knob.value, knob.last_change = resume.new, resume.at
    # Re-deferring is an ordinary decision: it waits for the cooldown.
    for t in range(6, 35):
        assert controller.decide([knob], load(0.95, 20_000, 0, 1.0), now=t) == []
    [again] = controller.decide([knob], load(0.95, 20_000, 0, 1.0), now=36)
    assert again.rule == "defer"
    knob.value, knob.last_change = again.new, again.at
    # Between the thresholds (hysteresis): hold.
    assert controller.decide([knob], load(0.45, 800, 0, 5.0), now=36.5) == []
    # The burst ends: resume at once.
    [done] = controller.decide([knob], load(0.95, 100, 0, 20.0), now=37)
    assert (done.new, done.rule) == (1.0, "resume")
    assert "burst ended" in done.reason
    # No backlog reading (replicator not scraped yet): hold.
    knob.value = 30.0
    missing = Signals(services={"replicator": {"backlog_seconds": None}}, host={"cpu_ratio": 0.2})
    assert controller.decide([knob], missing, now=100) == []
