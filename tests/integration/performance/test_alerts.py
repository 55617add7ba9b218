"""Threshold breaches reach a Slack webhook and an SMTP server; de-duplication, cooldown, recovery."""

from __future__ import annotations

from typing import Any

import pytest

from shared.performance.alerts import AlertDispatcher
from shared.performance.config import MonitoringConfig
from shared.performance.monitor import PerformanceMonitor
from shared.performance.realtime import RealTimePerformanceTracker
from shared.performance.ui_monitor import RealTimeUIMonitor
from tests.integration.performance.receivers import SlackReceiver, SmtpReceiver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tracker(
    slack: SlackReceiver | None,
    smtp: SmtpReceiver | None,
    *,
    thresholds: list[dict[str, Any]],
    cooldown: float = 0.0,
    max_per_minute: int = 100,
) -> tuple[RealTimePerformanceTracker, Clock]:
    config = MonitoringConfig.model_validate(
        {
            "alerts": {
                "cooldown_seconds": cooldown,
                "max_per_minute": max_per_minute,
                "slack": {"webhook_url": slack.url if slack else ""},
                "email": {
                    "smtp_host": "127.0.0.1" if smtp else "",
                    "smtp_port": smtp.port if smtp else 25,
                    "starttls": False,
                    "sender": "fleet@example.com",
                    "recipients": ["ops@example.com", "oncall@example.com"],
                },
            },
            "thresholds": thresholds,
        }
    )
    clock = Clock()
    monitor = PerformanceMonitor()
    tracker = RealTimePerformanceTracker(
        config,
        dispatcher=AlertDispatcher(config.alerts),
        monitor=monitor,
        ui_monitor=RealTimeUIMonitor(monitor),
        service="analytics",
        clock=clock,
    )
    return tracker, clock


LCP_RULE = {
    "metric": "web_vitals.LCP",
    "statistic": "p75",
    "max": 2500,
    "unit": "ms",
    "window_seconds": 60,
    "min_samples": 3,
    "description": "Largest Contentful Paint is no longer good",
}


async def test_breach_alerts_slack_and_email_once_then_recovers(
    slack_receiver: SlackReceiver, smtp_receiver: SmtpReceiver
) -> None:
    tracker, clock = make_tracker(slack_receiver, smtp_receiver, thresholds=[LCP_RULE])
    tracker.record_web_vital("LCP", 5200)
    tracker.record_web_vital("LCP", 4800)
    assert await tracker.evaluate() == []  # two samples: fewer than min_samples, nothing judged
    tracker.record_web_vital("LCP", 1200)

    (firing,) = await tracker.evaluate()
    assert firing.status == "firing"
    assert firing.delivered == ("slack", "email")
    assert firing.value == pytest.approx(5000.0)  # p75 of 1200, 4800, 5200

    (slack,) = slack_receiver.messages
    assert slack_receiver.content_types == ["application/json"]
    assert slack["text"].startswith("[FIRING] web_vitals.LCP p75 on analytics")
    assert "5000 ms" in slack["text"]
    assert "> threshold 2500 ms" in slack["text"]
    assert slack["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "[FIRING] web_vitals.LCP p75 on analytics"},
    }
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in slack["blocks"][2]["fields"]}
    assert fields["*Threshold*"] == "&gt; 2500 ms"  # Slack markup characters are escaped
    assert fields["*Value*"] == "5000 ms (p75)"
    assert slack["blocks"][3]["elements"][0]["text"] == "Largest Contentful Paint is no longer good"

    (mail,) = smtp_receiver.messages
    assert mail["Subject"] == "[Sentinel Fleet] [FIRING] web_vitals.LCP p75 on analytics"
    assert mail["From"] == "fleet@example.com"
    assert mail["X-Sentinel-Alert-Status"] == "firing"
    assert smtp_receiver.inbox.envelopes == [("fleet@example.com", ["ops@example.com", "oncall@example.com"])]
    body = mail.get_content()
    assert "value:     5000 ms" in body
    assert "threshold: > 2500 ms" in body

    # Still failing: de-duplicated, nothing new is sent however often it is judged.
    tracker.record_web_vital("LCP", 6000)
    for _ in range(3):
        clock.now += 5
        assert await tracker.evaluate() == []
    assert len(slack_receiver.messages) == 1
    assert len(smtp_receiver.messages) == 1
    assert tracker.thresholds_state()[0]["failing"] is True

    # The old samples leave the window; good values come in: one recovery message per channel.
    clock.now += 120
    for v in (900, 1100, 1000):
        tracker.record_web_vital("LCP", v)
    (resolved,) = await tracker.evaluate()
    assert resolved.status == "resolved"
    assert resolved.since == firing.since
    assert slack_receiver.messages[1]["text"].startswith("[RESOLVED] web_vitals.LCP p75 on analytics")
    assert "back at 1050 ms" in slack_receiver.messages[1]["text"]
    assert (
        smtp_receiver.messages[1]["Subject"] == "[Sentinel Fleet] [RESOLVED] web_vitals.LCP p75 on analytics"
    )
    assert await tracker.evaluate() == []
    assert len(slack_receiver.messages) == 2
    assert len(smtp_receiver.messages) == 2
    assert [a["status"] for a in tracker.dispatcher.recent_alerts()] == ["resolved", "firing"]


async def test_refiring_within_the_cooldown_stays_quiet_and_so_does_its_recovery(
    slack_receiver: SlackReceiver,
) -> None:
    rule = {"metric": "ui.frame_time_ms", "statistic": "max", "max": 50, "window_seconds": 10}
    tracker, clock = make_tracker(slack_receiver, None, thresholds=[rule], cooldown=3600)
    tracker.record_frame_time(80)
    assert [a.status for a in await tracker.evaluate()] == ["firing"]
    clock.now += 20
    tracker.record_frame_time(16)
    assert [a.status for a in await tracker.evaluate()] == ["resolved"]
    # Flapping: fails again at once. Within the cooldown no message, and then no recovery either.
    clock.now += 20
    tracker.record_frame_time(120)
    assert await tracker.evaluate() == []
    assert tracker.thresholds_state()[0]["failing"] is True
    clock.now += 20
    tracker.record_frame_time(10)
    assert await tracker.evaluate() == []
    assert len(slack_receiver.messages) == 2


async def test_rate_limit_caps_firing_messages_and_retries_when_allowed(
    slack_receiver: SlackReceiver,
) -> None:
    rules = [{"metric": f"m{i}", "statistic": "last", "max": 1, "window_seconds": 10} for i in range(4)]
    tracker, _ = make_tracker(slack_receiver, None, thresholds=rules, max_per_minute=2)
    for i in range(4):
        tracker.observe(f"m{i}", 5)
    sent = await tracker.evaluate()
    assert [a.metric for a in sent] == ["m0", "m1"]
    assert len(slack_receiver.messages) == 2
    # Still limited on the next round; the failing-but-untold thresholds are not forgotten.
    assert await tracker.evaluate() == []
    assert [s["notified"] for s in tracker.thresholds_state()] == [True, True, False, False]


async def test_a_failing_channel_does_not_stop_the_other(
    slack_receiver: SlackReceiver, smtp_receiver: SmtpReceiver
) -> None:
    slack_receiver.status = 500
    rule = {"metric": "upload.rows_per_second", "statistic": "p50", "min": 1000, "window_seconds": 60}
    tracker, _ = make_tracker(slack_receiver, smtp_receiver, thresholds=[rule])
    tracker.record_upload_speed(250)
    (alert,) = await tracker.evaluate()
    assert alert.delivered == ("email",)
    assert len(slack_receiver.messages) == 1  # it was tried
    assert "< threshold 1000" in smtp_receiver.messages[0].get_content()


async def test_unreachable_channels_time_out_without_raising() -> None:
    from tools.dev.embedded import free_port

    config = MonitoringConfig.model_validate(
        {
            "alerts": {
                "slack": {"webhook_url": f"http://127.0.0.1:{free_port()}/hook", "timeout_seconds": 1},
                "email": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": free_port(),
                    "recipients": ["a@example.com"],
                    "timeout_seconds": 1,
                },
            },
            "thresholds": [{"metric": "x", "statistic": "last", "max": 0, "window_seconds": 5}],
        }
    )
    monitor = PerformanceMonitor()
    tracker = RealTimePerformanceTracker(config, monitor=monitor, ui_monitor=RealTimeUIMonitor(monitor))
    tracker.observe("x", 1)
    (alert,) = await tracker.evaluate()
    assert alert.delivered == ()
    assert tracker.dispatcher.recent_alerts()[0]["delivered"] == []
