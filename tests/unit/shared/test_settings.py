from __future__ import annotations

import pytest

from services.optimizer.settings import OptimizerSettings
from services.replicator.settings import ReplicatorSettings
from shared.settings import FleetSettings


def test_defaults_follow_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BROKERS", "CACHE_TYPE", "HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = FleetSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.host == "127.0.0.1"
    assert settings.gateway_port == 8080
    assert settings.analytics_url == "http://127.0.0.1:8001"
    assert settings.access_events_topic == "access-events"
    assert settings.access_events_dlq_topic == "access-events.dlq"
    assert settings.cache_type == "memory"
    assert settings.cache_l1_size == 1024
    assert settings.cache_l3_path is None
    assert settings.cache_l3_ttl == 3600
    assert settings.tracing_enabled is True
    assert settings.optimizer_enabled is False
    assert settings.admin_token is None
    assert settings.database_url is None


def test_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_BROKERS", "k1:9092,k2:9092")
    monkeypatch.setenv("CACHE_DISK_PATH", "/var/cache/sentinel")
    monkeypatch.setenv("API_KEYS", "a, b,,c")
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret")
    settings = FleetSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert str(settings.cache_l3_path) == "/var/cache/sentinel"
    assert settings.api_key_set == {"a", "b", "c"}
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("ADMIN_TOKEN", " ")
    settings = FleetSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url is None
    assert settings.admin_token is None


def test_blank_means_unset_for_every_optional_setting_of_every_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One validator in the base covers the subclasses' optional settings too; a blank value of
    a setting that cannot be unset is still refused."""
    for name in ("PROMETHEUS_URL", "OPTIMIZER_PROCESSOR_URL", "TIMESCALE_RETENTION", "CACHE_L3_PATH"):
        monkeypatch.setenv(name, "  ")
    monkeypatch.setenv("TIMESCALE_COMPRESS_AFTER", "")
    optimizer = OptimizerSettings(_env_file=None)  # type: ignore[call-arg]
    assert optimizer.prometheus_url is None
    assert optimizer.optimizer_processor_url is None
    replicator = ReplicatorSettings(_env_file=None)  # type: ignore[call-arg]
    assert replicator.timescale_retention is None
    assert replicator.timescale_compress_after is None
    assert replicator.cache_l3_path is None
    monkeypatch.setenv("CACHE_L1_SIZE", " ")
    with pytest.raises(ValueError, match="CACHE_L1_SIZE"):
        FleetSettings(_env_file=None)  # type: ignore[call-arg]


def test_bad_values_fail_with_the_setting_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_TYPE", "memcached")
    with pytest.raises(ValueError, match="CACHE_TYPE"):
        FleetSettings(_env_file=None)  # type: ignore[call-arg]
