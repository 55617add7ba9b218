"""Fleet-wide settings, read from the environment and `.env` (docs/reference.md, "Settings").

Each service subclasses :class:`FleetSettings` to add its own knobs; all of them share the
names below so one `.env` configures the whole fleet.
"""

from __future__ import annotations

import types
import typing
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

# The files the fleet reads at run time (route table, breaker and monitoring config). A wheel
# carries them inside this package (pyproject.toml: force-include), so an installed fleet finds
# them wherever it runs from; a checkout (and its editable install) reads them where they are
# kept, at the top of the repository. Either way the path depends on the package, never on the
# working directory.
_BUNDLED = PACKAGE_DIR / "_bundled"
DATA_ROOT = _BUNDLED if _BUNDLED.is_dir() else REPO_ROOT
CONFIG_DIR = DATA_ROOT / "config"

DEFAULT_PORTS = {
    "gateway": 8080,
    "analytics": 8001,
    "event_processor": 8002,
    "optimizer": 8003,
    "replicator": 8004,
}


@cache
def _optional_fields(cls: type[BaseSettings]) -> frozenset[str]:
    """Names of the settings of `cls` whose type admits None."""

    def admits_none(annotation: object) -> bool:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            return type(None) in typing.get_args(annotation)
        return annotation is None or annotation is type(None)

    return frozenset(name for name, f in cls.model_fields.items() if admits_none(f.annotation))


class MissingSetting(RuntimeError):
    """A setting this process cannot run without is unset; `setting` is its variable name."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class FleetSettings(BaseSettings):
    """Settings every service understands (docs/reference.md, "Settings", "Every service")."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    host: str = Field("127.0.0.1", validation_alias="HOST")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias="LOG_LEVEL", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        validation_alias="LOG_FORMAT",
        description="json (one object per line), console (readable), "
        "or auto: console on a terminal, else json",
    )

    gateway_port: int = Field(DEFAULT_PORTS["gateway"], validation_alias="GATEWAY_PORT")
    analytics_port: int = Field(DEFAULT_PORTS["analytics"], validation_alias="ANALYTICS_PORT")
    event_processor_port: int = Field(
        DEFAULT_PORTS["event_processor"], validation_alias="EVENT_PROCESSOR_PORT"
    )
    optimizer_port: int = Field(DEFAULT_PORTS["optimizer"], validation_alias="OPTIMIZER_PORT")
    replication_metrics_port: int = Field(
        DEFAULT_PORTS["replicator"], validation_alias="REPLICATION_METRICS_PORT"
    )

    gateway_url: str = Field("http://127.0.0.1:8080", validation_alias="GATEWAY_URL")
    analytics_url: str = Field("http://127.0.0.1:8001", validation_alias="ANALYTICS_URL")
    event_processor_url: str = Field("http://127.0.0.1:8002", validation_alias="EVENT_PROCESSOR_URL")
    optimizer_url: str = Field("http://127.0.0.1:8003", validation_alias="OPTIMIZER_URL")
    replicator_url: str = Field("http://127.0.0.1:8004", validation_alias="REPLICATOR_URL")

    # Unset means "embedded": `make run` and the test suite start a server and export the URL.
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    timescale_url: str | None = Field(None, validation_alias="TIMESCALE_URL")
    database_pool_min: int = Field(1, ge=0, validation_alias="DATABASE_POOL_MIN")
    database_pool_max: int = Field(10, ge=1, validation_alias="DATABASE_POOL_MAX")
    database_timeout_s: float = Field(10.0, gt=0, validation_alias="DATABASE_TIMEOUT")

    kafka_bootstrap_servers: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BROKERS")
    )
    access_events_topic: str = Field("access-events", validation_alias="ACCESS_EVENTS_TOPIC")
    access_events_dlq_topic: str = Field("access-events.dlq", validation_alias="ACCESS_EVENTS_DLQ_TOPIC")
    access_events_partitions: int = Field(4, ge=1, validation_alias="ACCESS_EVENTS_PARTITIONS")
    kafka_request_timeout_ms: int = Field(10_000, ge=100, validation_alias="KAFKA_REQUEST_TIMEOUT_MS")

    cache_type: Literal["memory", "redis", "intelligent"] = Field("memory", validation_alias="CACHE_TYPE")
    cache_host: str = Field("localhost", validation_alias="CACHE_HOST")
    cache_port: int = Field(6379, validation_alias="CACHE_PORT")
    cache_database: int = Field(0, ge=0, validation_alias="CACHE_DATABASE")
    cache_username: str | None = Field(None, validation_alias="CACHE_USERNAME")
    cache_password: SecretStr | None = Field(None, validation_alias="CACHE_PASSWORD")
    cache_tls: bool = Field(False, validation_alias="CACHE_TLS")
    cache_tls_ca_file: Path | None = Field(None, validation_alias="CACHE_TLS_CA_FILE")
    cache_key_prefix: str = Field("sentinel", validation_alias="CACHE_KEY_PREFIX")
    cache_l1_size: int = Field(1024, ge=1, validation_alias="CACHE_L1_SIZE")
    cache_l3_path: Path | None = Field(
        None, validation_alias=AliasChoices("CACHE_L3_PATH", "CACHE_DISK_PATH")
    )
    cache_l3_ttl: int = Field(3600, ge=1, validation_alias="CACHE_L3_TTL")

    jaeger_endpoint: str = Field("http://localhost:14268/api/traces", validation_alias="JAEGER_ENDPOINT")
    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    tracing_enabled: bool = Field(True, validation_alias="TRACING_ENABLED")
    tracing_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        validation_alias="TRACING_SAMPLE_RATIO",
        description="share of new traces recorded (parent-based: a sampled caller's trace is kept)",
    )
    deployment_environment: str = Field(
        "development", min_length=1, max_length=64, validation_alias="DEPLOYMENT_ENVIRONMENT"
    )

    circuit_breaker_config: Path = Field(
        CONFIG_DIR / "circuit-breakers.yaml", validation_alias="CIRCUIT_BREAKER_CONFIG"
    )
    monitoring_config: Path = Field(CONFIG_DIR / "monitoring.yaml", validation_alias="MONITORING_CONFIG")

    replication_interval: float = Field(1.0, gt=0, validation_alias="REPLICATION_INTERVAL")
    replication_batch_size: int = Field(50_000, ge=1, validation_alias="REPLICATION_BATCH_SIZE")

    optimizer_enabled: bool = Field(False, validation_alias="OPTIMIZER_ENABLED")

    analytics_chunk_size: int = Field(50_000, ge=100, validation_alias="ANALYTICS_CHUNK_SIZE")
    analytics_max_workers: int = Field(2, ge=1, validation_alias="ANALYTICS_MAX_WORKERS")
    analytics_max_memory_mb: int = Field(512, ge=16, validation_alias="ANALYTICS_MAX_MEMORY_MB")

    max_memory: int = Field(2048, ge=64, validation_alias="MAX_MEMORY", description="MiB per process")
    memory_warning_threshold: float = Field(0.8, gt=0, le=1, validation_alias="MEMORY_WARNING_THRESHOLD")
    max_cpu_cores: int = Field(2, ge=1, validation_alias="MAX_CPU_CORES")
    cpu_warning_threshold: float = Field(0.85, gt=0, le=1, validation_alias="CPU_WARNING_THRESHOLD")

    admin_token: SecretStr | None = Field(None, validation_alias="ADMIN_TOKEN")
    api_keys: str | None = Field(None, validation_alias="API_KEYS")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """`FOO=` in a compose file or .env means "not set", not "the empty string": for every
        setting that may be unset (here and in each service's subclass), blank becomes None."""
        if (
            isinstance(value, str)
            and not value.strip()
            and info.field_name is not None
            and info.field_name in _optional_fields(cls)
        ):
            return None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def api_key_set(self) -> frozenset[str]:
        if not self.api_keys:
            return frozenset()
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    def require_database_url(self) -> str:
        if not self.database_url:
            raise MissingSetting(
                "DATABASE_URL",
                "DATABASE_URL is not set. `make run` starts an embedded PostgreSQL and sets it; "
                "when starting a service by hand, point DATABASE_URL at a PostgreSQL server.",
            )
        return self.database_url

    def require_timescale_url(self) -> str:
        if not self.timescale_url:
            raise MissingSetting(
                "TIMESCALE_URL", "TIMESCALE_URL is not set (the replication target database)."
            )
        return self.timescale_url

    def require_kafka(self) -> str:
        if not self.kafka_bootstrap_servers:
            raise MissingSetting(
                "KAFKA_BOOTSTRAP_SERVERS",
                "KAFKA_BOOTSTRAP_SERVERS is not set. `make run` starts an embedded broker and sets it.",
            )
        return self.kafka_bootstrap_servers


@lru_cache(maxsize=1)
def get_fleet_settings() -> FleetSettings:
    return FleetSettings()
