"""The rollup refresher's settings refuse values that would make it never refresh or wait
forever, and accept the documented edges."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.analytics.settings import AnalyticsSettings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROLLUP_DEFER_ABOVE_ROWS_PER_S", "0"),
        ("ROLLUP_DEFER_ABOVE_ROWS_PER_S", "-5"),
        ("ROLLUP_DEFER_ABOVE_ROWS_PER_S", "nan"),
        ("ROLLUP_DEFER_ABOVE_ROWS_PER_S", "fast"),
        ("ROLLUP_MAX_DEFER_S", "-1"),
        ("ROLLUP_MAX_DEFER_S", "inf"),
        ("ROLLUP_MAX_DEFER_S", "86401"),
        ("ROLLUP_MAX_DEFER_S", "nan"),
        ("ROLLUP_MAX_DEFER_S", "1e400"),
    ],
)
def test_a_hostile_value_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        AnalyticsSettings()


def test_the_edges_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLUP_DEFER_ABOVE_ROWS_PER_S", "inf")  # never defers
    monkeypatch.setenv("ROLLUP_MAX_DEFER_S", "0")  # never waits
    settings = AnalyticsSettings()
    assert settings.rollup_defer_above_rows_per_s == float("inf")
    assert settings.rollup_max_defer_s == 0


def test_the_defaults() -> None:
    settings = AnalyticsSettings()
    assert (settings.rollup_defer_above_rows_per_s, settings.rollup_max_defer_s) == (20_000, 600)
