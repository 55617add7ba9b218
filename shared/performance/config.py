"""`config/monitoring.yaml` (setting MONITORING_CONFIG): snapshots, thresholds and alert channels.

The file holds the defaults; a few environment variables override it so secrets (webhook URL,
SMTP password) and per-deployment addresses need not be written into the repository:

| variable | overrides |
|---|---|
| `ALERTS_ENABLED` | `alerts.enabled` |
| `ALERT_COOLDOWN_SECONDS` | `alerts.cooldown_seconds` |
| `ALERT_MAX_PER_MINUTE` | `alerts.max_per_minute` |
| `SLACK_WEBHOOK_URL` | `alerts.slack.webhook_url` |
| `ALERT_SMTP_HOST`, `ALERT_SMTP_PORT` | `alerts.email.smtp_host`, `alerts.email.smtp_port` |
| `ALERT_SMTP_USERNAME`, `ALERT_SMTP_PASSWORD` | `alerts.email.username`, `alerts.email.password` |
| `ALERT_SMTP_STARTTLS`, `ALERT_SMTP_SSL` | `alerts.email.starttls`, `alerts.email.ssl` |
| `ALERT_EMAIL_FROM`, `ALERT_EMAIL_TO` (comma list) | `alerts.email.sender`, `alerts.email.recipients` |
| `PERFORMANCE_SNAPSHOT_INTERVAL` | `snapshots.interval_seconds` |
| `PERFORMANCE_HISTORY_SIZE` | `snapshots.history_size` |
| `MONITORING_EVALUATION_INTERVAL` | `evaluation.interval_seconds` |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

Statistic = Literal["last", "mean", "min", "max", "p50", "p75", "p90", "p95", "p99"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotConfig(_Strict):
    interval_seconds: float = Field(10.0, gt=0)
    history_size: int = Field(360, ge=1, le=100_000)


class EvaluationConfig(_Strict):
    interval_seconds: float = Field(5.0, gt=0)


class SlackConfig(_Strict):
    webhook_url: SecretStr | None = None
    timeout_seconds: float = Field(5.0, gt=0)

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class EmailConfig(_Strict):
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    sender: str = "sentinel-fleet@localhost"
    recipients: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("smtp_host", "username", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def configured(self) -> bool:
        return bool(self.smtp_host and self.recipients)


class AlertsConfig(_Strict):
    enabled: bool = True
    cooldown_seconds: float = Field(300.0, ge=0)
    max_per_minute: int = Field(10, ge=1)
    recent_size: int = Field(100, ge=1, le=10_000)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)


class ThresholdRule(_Strict):
    """Fires when `statistic` of `metric` over the last `window_seconds` is above `max` (or below
    `min`) with at least `min_samples` observations in the window; resolves when it is back."""

    metric: str = Field(min_length=1)
    statistic: Statistic = "p95"
    max: float | None = None
    min: float | None = None
    window_seconds: float = Field(60.0, gt=0)
    min_samples: int = Field(1, ge=1)
    severity: Literal["info", "warning", "critical"] = "warning"
    unit: str = ""
    description: str = ""
    enabled: bool = True

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdRule:
        if (self.max is None) == (self.min is None):
            raise ValueError(f"threshold for {self.metric!r} needs exactly one of 'max' or 'min'")
        return self

    @property
    def key(self) -> str:
        bound = f"max={self.max:g}" if self.max is not None else f"min={self.min:g}"
        return f"{self.metric}:{self.statistic}:{bound}"

    @property
    def limit(self) -> float:
        value = self.max if self.max is not None else self.min
        assert value is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        return value

    def breached(self, value: float) -> bool:
        if self.max is not None:
            return value > self.max
        assert self.min is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        return value < self.min


class MonitoringConfig(_Strict):
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    thresholds: list[ThresholdRule] = Field(default_factory=list)


class _MonitoringEnv(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    alerts_enabled: bool | None = Field(None, validation_alias="ALERTS_ENABLED")
    alert_cooldown_seconds: float | None = Field(None, validation_alias="ALERT_COOLDOWN_SECONDS")
    alert_max_per_minute: int | None = Field(None, validation_alias="ALERT_MAX_PER_MINUTE")
    slack_webhook_url: str | None = Field(None, validation_alias="SLACK_WEBHOOK_URL")
    smtp_host: str | None = Field(None, validation_alias="ALERT_SMTP_HOST")
    smtp_port: int | None = Field(None, validation_alias="ALERT_SMTP_PORT")
    smtp_username: str | None = Field(None, validation_alias="ALERT_SMTP_USERNAME")
    smtp_password: str | None = Field(None, validation_alias="ALERT_SMTP_PASSWORD")
    smtp_starttls: bool | None = Field(None, validation_alias="ALERT_SMTP_STARTTLS")
    smtp_ssl: bool | None = Field(None, validation_alias="ALERT_SMTP_SSL")
    email_from: str | None = Field(None, validation_alias="ALERT_EMAIL_FROM")
    email_to: str | None = Field(None, validation_alias="ALERT_EMAIL_TO")
    snapshot_interval: float | None = Field(None, validation_alias="PERFORMANCE_SNAPSHOT_INTERVAL")
    history_size: int | None = Field(None, validation_alias="PERFORMANCE_HISTORY_SIZE")
    evaluation_interval: float | None = Field(None, validation_alias="MONITORING_EVALUATION_INTERVAL")


class MonitoringConfigError(ValueError):
    pass


def _set(tree: dict[str, Any], path: str, value: object) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _apply_env(raw: dict[str, Any], env: _MonitoringEnv) -> None:
    overrides: dict[str, object] = {
        "alerts.enabled": env.alerts_enabled,
        "alerts.cooldown_seconds": env.alert_cooldown_seconds,
        "alerts.max_per_minute": env.alert_max_per_minute,
        "alerts.slack.webhook_url": env.slack_webhook_url,
        "alerts.email.smtp_host": env.smtp_host,
        "alerts.email.smtp_port": env.smtp_port,
        "alerts.email.username": env.smtp_username,
        "alerts.email.password": env.smtp_password,
        "alerts.email.starttls": env.smtp_starttls,
        "alerts.email.ssl": env.smtp_ssl,
        "alerts.email.sender": env.email_from,
        "snapshots.interval_seconds": env.snapshot_interval,
        "snapshots.history_size": env.history_size,
        "evaluation.interval_seconds": env.evaluation_interval,
    }
    if env.email_to is not None:
        overrides["alerts.email.recipients"] = [a.strip() for a in env.email_to.split(",") if a.strip()]
    for path, value in overrides.items():
        if value is not None:
            _set(raw, path, value)


def load_monitoring_config(path: Path | str | None, *, use_env: bool = True) -> MonitoringConfig:
    """Read the YAML file (missing file = built-in defaults) and apply environment overrides."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).is_file():
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise MonitoringConfigError(f"{path}: the top level must be a mapping")
        raw = loaded or {}
    if use_env:
        _apply_env(raw, _MonitoringEnv())
    try:
        return MonitoringConfig.model_validate(raw)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise MonitoringConfigError(f"{path or 'monitoring config'}: {where}") from None
