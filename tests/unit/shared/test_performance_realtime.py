"""Web-vitals ratings, monitoring config loading and overrides, the bounded UI monitor."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.performance.config import MonitoringConfigError, load_monitoring_config
from shared.performance.monitor import PerformanceMonitor
from shared.performance.realtime import RealTimePerformanceTracker, rate_web_vital
from shared.performance.ui_monitor import MAX_CALLBACK_NAMES, RECENT_FRAMES, RealTimeUIMonitor, get_ui_monitor
from shared.settings import REPO_ROOT


@pytest.mark.parametrize(
    ("name", "value", "rating"),
    [
        ("LCP", 2500, "good"),
        ("LCP", 2501, "needs-improvement"),
        ("LCP", 4000, "needs-improvement"),
        ("LCP", 4001, "poor"),
        ("INP", 200, "good"),
        ("INP", 500, "needs-improvement"),
        ("INP", 501, "poor"),
        ("CLS", 0.1, "good"),
        ("CLS", 0.11, "needs-improvement"),
        ("CLS", 0.26, "poor"),
        ("FCP", 1800, "good"),
        ("FCP", 3001, "poor"),
        ("TTFB", 800, "good"),
        ("TTFB", 1000, "needs-improvement"),
        ("TTFB", 1801, "poor"),
    ],
)
def test_web_vitals_are_rated_by_the_published_boundaries(name: str, value: float, rating: str) -> None:
    assert rate_web_vital(name, value) == rating


def test_the_shipped_config_loads_with_thresholds_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLACK_WEBHOOK_URL", "ALERT_SMTP_HOST", "ALERT_EMAIL_TO", "ALERTS_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    config = load_monitoring_config(REPO_ROOT / "config" / "monitoring.yaml")
    metrics = {rule.metric for rule in config.thresholds if rule.enabled}
    assert {f"web_vitals.{n}" for n in ("LCP", "INP", "CLS", "FCP", "TTFB")} <= metrics
    assert {"ui.frame_time_ms", "upload.rows_per_second", "process.rss_mb"} <= metrics
    assert config.alerts.enabled
    assert config.snapshots.interval_seconds == 10


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text("alerts:\n  email:\n    smtp_host: mail.internal\n    recipients: [a@example.com]\n")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/C")
    monkeypatch.setenv("ALERT_EMAIL_TO", "x@example.com, y@example.com")
    monkeypatch.setenv("ALERT_SMTP_PORT", "2525")
    monkeypatch.setenv("PERFORMANCE_SNAPSHOT_INTERVAL", "2.5")
    config = load_monitoring_config(path)
    assert config.alerts.slack.webhook_url is not None
    assert config.alerts.slack.webhook_url.get_secret_value() == "https://hooks.slack.com/services/T/B/C"
    assert config.alerts.email.smtp_host == "mail.internal"
    assert config.alerts.email.smtp_port == 2525
    assert config.alerts.email.recipients == ["x@example.com", "y@example.com"]
    assert config.snapshots.interval_seconds == 2.5


def test_a_bad_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text("thresholds:\n  - metric: x\n    statistic: p42\n    max: 1\n")
    with pytest.raises(MonitoringConfigError, match=r"thresholds\.0\.statistic"):
        load_monitoring_config(path, use_env=False)
    path.write_text("thresholds:\n  - metric: x\n")
    with pytest.raises(MonitoringConfigError, match="exactly one of 'max' or 'min'"):
        load_monitoring_config(path, use_env=False)


def test_missing_file_means_built_in_defaults(tmp_path: Path) -> None:
    config = load_monitoring_config(tmp_path / "absent.yaml", use_env=False)
    assert config.thresholds == []
    assert config.alerts.enabled


def test_ui_monitor_is_bounded_and_forwards_to_the_shared_monitor() -> None:
    monitor = PerformanceMonitor()
    ui = RealTimeUIMonitor(monitor)
    for i in range(RECENT_FRAMES * 3):
        ui.record_frame_time(16.0 if i % 10 else 70.0)
    for i in range(MAX_CALLBACK_NAMES + 20):
        ui.record_callback_duration(f"cb{i}", 0.01)
    metrics = ui.get_ui_metrics()
    assert metrics["frames"]["total"] == RECENT_FRAMES * 3
    assert metrics["frames"]["recent"]["count"] == RECENT_FRAMES
    assert metrics["frames"]["jank_frames"] == RECENT_FRAMES // 10
    assert len(metrics["callbacks"]) == MAX_CALLBACK_NAMES + 2  # the names, "_other" and "total"
    assert metrics["callbacks"]["_other"]["count"] == 20
    ops = monitor.get_metrics_summary()["operations"]
    assert ops["ui.frame_time"]["count"] == RECENT_FRAMES * 3
    assert ops["ui.frame_time"]["max"] == pytest.approx(0.07)
    assert ops["ui.callback.cb0"]["count"] == 1
    with pytest.raises(ValueError, match="callback name"):
        ui.record_callback_duration("<script>", 0.1)
    with pytest.raises(ValueError, match="frame time"):
        ui.record_frame_time(-1)
    assert get_ui_monitor() is get_ui_monitor()


def test_tracker_files_vitals_in_the_monitor_in_seconds_and_cls_as_a_score() -> None:
    monitor = PerformanceMonitor()
    tracker = RealTimePerformanceTracker(monitor=monitor, ui_monitor=RealTimeUIMonitor(monitor))
    assert tracker.record_web_vital("LCP", 3000) == "needs-improvement"
    assert tracker.record_web_vital("CLS", 0.02) == "good"
    ops = monitor.get_metrics_summary()["operations"]
    assert ops["web_vitals.LCP"]["max"] == pytest.approx(3.0)
    assert ops["web_vitals.LCP"]["unit"] == "seconds"
    assert ops["web_vitals.CLS"]["max"] == pytest.approx(0.02)
    assert ops["web_vitals.CLS"]["unit"] == "score"
    assert tracker.vitals_summary()["LCP"] == {"p75": 3000.0, "rating": "needs-improvement", "samples": 1}
    with pytest.raises(ValueError, match="unknown web vital"):
        tracker.record_web_vital("FID", 10)
