"""Alert delivery: Slack incoming webhooks and SMTP email, with a cooldown and a rate limit.

De-duplication (one message when a threshold starts to fail, one when it recovers) is the
tracker's state machine; this module decides whether a message may go out now and sends it to
every configured channel concurrently, each under its own timeout. A failing channel is logged
and counted, never raised into the caller.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal, Protocol

import httpx
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from shared.performance.config import AlertsConfig, EmailConfig, SlackConfig

log = logging.getLogger(__name__)

ALERTS_SENT = Counter(
    "performance_alerts_total",
    "Alert messages handed to a channel, by outcome",
    ["channel", "status", "outcome"],
)
ALERTS_SUPPRESSED = Counter(
    "performance_alerts_suppressed_total", "Firing alerts not sent, by reason", ["reason"]
)

AlertStatus = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    key: str
    metric: str
    status: AlertStatus
    severity: str
    statistic: str
    value: float
    threshold: float
    comparison: Literal[">", "<"]
    window_seconds: float
    samples: int
    unit: str
    description: str
    service: str
    host: str
    since: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    delivered: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        word = "FIRING" if self.status == "firing" else "RESOLVED"
        return f"[{word}] {self.metric} {self.statistic} on {self.service}"

    @property
    def summary(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.status == "firing":
            return (
                f"{self.metric} {self.statistic} is {self.value:.4g}{unit}, "
                f"{self.comparison} threshold {self.threshold:.4g}{unit} "
                f"({self.samples} samples in {self.window_seconds:g}s)"
            )
        return (
            f"{self.metric} {self.statistic} is back at {self.value:.4g}{unit} "
            f"(threshold {self.comparison} {self.threshold:.4g}{unit}), failing since {self.since}"
        )

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["delivered"] = list(self.delivered)
        body["title"] = self.title
        body["summary"] = self.summary
        return body


class AlertChannel(Protocol):
    name: str

    async def send(self, alert: Alert) -> None: ...


def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup (`<!channel>` would ping everyone).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Incoming-webhook JSON: `text` is the notification fallback, `blocks` the message."""
    icon = ":red_circle:" if alert.status == "firing" else ":large_green_circle:"
    unit = f" {alert.unit}" if alert.unit else ""
    fields = [
        ("Status", alert.status),
        ("Severity", alert.severity),
        ("Value", f"{alert.value:.4g}{unit} ({alert.statistic})"),
        ("Threshold", f"{alert.comparison} {alert.threshold:.4g}{unit}"),
        ("Service", f"{alert.service} on {alert.host}"),
        ("Window", f"{alert.samples} samples in {alert.window_seconds:g}s"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {_slack_escape(alert.summary)}"}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_slack_escape(v)}"} for k, v in fields],
        },
    ]
    if alert.description:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_escape(alert.description)}]}
        )
    return {"text": f"{alert.title}: {alert.summary}", "blocks": blocks}


class SlackChannel:
    name = "slack"

    def __init__(self, config: SlackConfig, client: httpx.AsyncClient | None = None) -> None:
        assert config.webhook_url is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        self._url = config.webhook_url.get_secret_value()
        self._timeout = config.timeout_seconds
        self._client = client

    async def send(self, alert: Alert) -> None:
        payload = slack_payload(alert)
        if self._client is not None:
            response = await self._client.post(self._url, json=payload, timeout=self._timeout)
        else:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.post(self._url, json=payload)
        if response.status_code >= 300:
            raise RuntimeError(f"Slack webhook answered {response.status_code}: {response.text[:200]}")


def email_message(alert: Alert, config: EmailConfig) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[Sentinel Fleet] {alert.title}"
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.recipients)
    msg["X-Sentinel-Alert-Key"] = alert.key
    msg["X-Sentinel-Alert-Status"] = alert.status
    unit = f" {alert.unit}" if alert.unit else ""
    lines = [
        alert.summary,
        "",
        f"status:    {alert.status}",
        f"severity:  {alert.severity}",
        f"metric:    {alert.metric} ({alert.statistic} over {alert.window_seconds:g}s)",
        f"samples:   {alert.samples}",
        f"value:     {alert.value:.6g}{unit}",
        f"threshold: {alert.comparison} {alert.threshold:.6g}{unit}",
        f"service:   {alert.service} on {alert.host}",
        f"since:     {alert.since}",
        f"at:        {alert.at}",
    ]
    if alert.description:
        lines += ["", alert.description]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailChannel:
    """smtplib in a worker thread: the standard library's client is complete (STARTTLS, AUTH,
    SMTPS) and one message per alert does not justify another dependency."""

    name = "email"

    def __init__(self, config: EmailConfig) -> None:
        self._config = config

    def _send_blocking(self, msg: EmailMessage) -> None:
        cfg = self._config
        assert cfg.smtp_host  # noqa: S101  type narrowing for mypy; the code above guarantees it
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if cfg.ssl:
            smtp = smtplib.SMTP_SSL(
                cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, context=context
            )
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
        with smtp:
            smtp.ehlo()
            if cfg.starttls and not cfg.ssl:
                # No silent downgrade: a server that does not offer STARTTLS is an error here.
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.username and cfg.password:
                smtp.login(cfg.username, cfg.password.get_secret_value())
            smtp.send_message(msg)

    async def send(self, alert: Alert) -> None:
        msg = email_message(alert, self._config)
        await asyncio.wait_for(asyncio.to_thread(self._send_blocking, msg), self._config.timeout_seconds + 1)


def channels_from_config(config: AlertsConfig, client: httpx.AsyncClient | None = None) -> list[AlertChannel]:
    channels: list[AlertChannel] = []
    if config.slack.webhook_url is not None:
        channels.append(SlackChannel(config.slack, client))
    if config.email.configured:
        channels.append(EmailChannel(config.email))
    return channels


class AlertDispatcher:
    """Cooldown per alert key, a moving-window limit on firing messages, and a ring of recent alerts."""

    def __init__(self, config: AlertsConfig, channels: Sequence[AlertChannel] | None = None) -> None:
        self.config = config
        self.channels = list(channels) if channels is not None else channels_from_config(config)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._limit = RateLimitItemPerMinute(config.max_per_minute)
        self._last_fired: dict[str, float] = {}
        self.recent: deque[Alert] = deque(maxlen=config.recent_size)
        self.hostname = socket.gethostname()

    def may_fire(self, key: str) -> str | None:
        """None when a firing message for `key` may go out now, else the reason it may not."""
        if not self.config.enabled:
            return "disabled"
        last = self._last_fired.get(key)
        if last is not None and time.monotonic() - last < self.config.cooldown_seconds:
            return "cooldown"
        if not self._limiter.hit(self._limit, "alerts"):
            return "rate_limited"
        return None

    async def dispatch(self, alert: Alert) -> Alert:
        """Send to every channel; returns the alert with the channels that took it."""
        if alert.status == "firing":
            self._last_fired[alert.key] = time.monotonic()
        results = await asyncio.gather(*(self._send(ch, alert) for ch in self.channels))
        delivered = tuple(ch.name for ch, ok in zip(self.channels, results, strict=True) if ok)
        done = replace(alert, delivered=delivered)
        self.recent.append(done)
        return done

    def suppressed(self, reason: str) -> None:
        ALERTS_SUPPRESSED.labels(reason).inc()

    async def _send(self, channel: AlertChannel, alert: Alert) -> bool:
        try:
            await channel.send(alert)
        except Exception as exc:
            log.warning("alert %s to %s failed: %s: %s", alert.key, channel.name, type(exc).__name__, exc)
            ALERTS_SENT.labels(channel.name, alert.status, "error").inc()
            return False
        ALERTS_SENT.labels(channel.name, alert.status, "sent").inc()
        return True

    def recent_alerts(self, limit: int = 50) -> list[dict[str, Any]]:
        return [a.as_dict() for a in list(self.recent)[-limit:][::-1]]
