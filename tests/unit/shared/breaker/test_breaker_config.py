"""The breaker file: inheritance from defaults, the simple form, errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.breaker import BreakerConfigError, BreakerRegistry, get_breaker_registry


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "breakers.yaml"
    path.write_text(text)
    return path


def test_named_breakers_inherit_defaults_key_by_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
defaults:
  failure_rate_threshold: 40
  wait_duration_in_open_state: 2m
breakers:
  analytics:
    sliding_window_type: time_based
    sliding_window_size: 30
  database: {}
""",
    )
    registry = BreakerRegistry.from_yaml(path)
    analytics = registry.get("analytics").config
    assert analytics.failure_rate_threshold == 40
    assert analytics.wait_duration_in_open_state == 120
    assert analytics.sliding_window_type == "time_based"
    assert registry.get("database").config.sliding_window_type == "count_based"
    unknown = registry.get("never_configured")
    assert unknown.config == registry.defaults
    assert set(registry.snapshot()) == {"analytics", "database", "never_configured"}


def test_simple_form_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
circuit_breakers:
  analytics:
    failure_threshold: 5
    recovery_timeout: 60
""",
    )
    config = BreakerRegistry.from_yaml(path).get("analytics").config
    assert config.failure_threshold == 5
    assert config.wait_duration_in_open_state == 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("breakers:\n  kafka:\n    failure_rate_threshold: 150\n", "breakers.kafka.failure_rate_threshold"),
        (
            "breakers:\n  kafka:\n    wait_duration_in_open_state: soon\n",
            "breakers.kafka.wait_duration_in_open_state",
        ),
        (
            "defaults:\n  permitted_calls_in_half_open_state: 0\n",
            "defaults.permitted_calls_in_half_open_state",
        ),
        ("breakers:\n  kafka:\n    falure_threshold: 3\n", "breakers.kafka.falure_threshold"),
        ("breakers:\n  kafka:\n    ignore_exceptions: [no.such.Error]\n", "breakers.kafka.ignore_exceptions"),
        (
            "breakers:\n  kafka:\n    recovery_timeout: 1\n    wait_duration_in_open_state: 2\n",
            "breakers.kafka",
        ),
        ("breakerz: {}\n", "breakerz"),
        ("breakers: [1, 2]\n", "breakers"),
        ("defaults: {sliding_window_type: rolling}\n", "defaults.sliding_window_type"),
        ("breakers:\n  kafka: [\n", "not valid YAML"),
    ],
)
def test_wrong_values_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(BreakerConfigError) as info:
        BreakerRegistry.from_yaml(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BreakerConfigError, match="cannot read"):
        BreakerRegistry.from_yaml(tmp_path / "absent.yaml")


def test_process_registry_is_cached_per_file(tmp_path: Path) -> None:
    path = write(tmp_path, "breakers:\n  redis: {failure_threshold: 2}\n")
    first = get_breaker_registry(path)
    assert get_breaker_registry(path) is first
    assert first.get("redis").config.failure_threshold == 2
