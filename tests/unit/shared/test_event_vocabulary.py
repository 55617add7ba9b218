"""The event vocabulary: the time window and event size are settings, checked when read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.event_vocabulary import (
    EventLimits,
    extra_problem,
    get_event_limits,
    parse_timestamp,
    set_event_limits,
    text_problem,
    timestamp_problem,
)
from shared.events import AccessEvent
from tests.factories import event_dict


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    set_event_limits(None)
    yield
    set_event_limits(None)


def test_the_window_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    assert timestamp_problem(datetime(1970, 1, 1, tzinfo=UTC), now) is None
    assert timestamp_problem(now + timedelta(hours=23), now) is None
    assert timestamp_problem(now + timedelta(hours=25), now) is not None
    monkeypatch.setenv("EVENT_TIME_MIN", "2020-01-01")
    monkeypatch.setenv("EVENT_TIME_MAX_AHEAD", "60")
    set_event_limits(None)
    assert get_event_limits().event_time_min == datetime(2020, 1, 1, tzinfo=UTC)
    assert "before the earliest" in (timestamp_problem(datetime(2019, 12, 31, tzinfo=UTC), now) or "")
    assert timestamp_problem(now + timedelta(seconds=61), now) is not None
    with pytest.raises(ValidationError, match="timestamp"):
        AccessEvent.model_validate(event_dict(timestamp="2019-06-01T00:00:00Z"))


@pytest.mark.parametrize(
    ("name", "value"),
    [("EVENT_TIME_MIN", "last tuesday"), ("EVENT_TIME_MAX_AHEAD", "-1"), ("MAX_EVENT_BYTES", "10")],
)
def test_a_wrong_setting_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        EventLimits()


def test_the_old_processor_setting_still_sets_the_event_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENT_PROCESSOR_MAX_MESSAGE_BYTES", "2048")
    assert EventLimits().max_event_bytes == 2048


@pytest.mark.parametrize(
    "value",
    ["9999-12-31T23:59:59-05:00", "0000-01-01", "1" * 40, 10**30, 1e300, float("nan"), "x" * 100, True, []],
)
def test_parse_timestamp_raises_only_value_error(value: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the type is the point: never OverflowError
        parse_timestamp(value)


def test_characters_and_extras() -> None:
    assert text_problem("badge \u00e9\U0001f600") is None
    assert "NUL" in (text_problem("a\x00") or "")
    assert "surrogate" in (text_problem("\ud800") or "")
    assert extra_problem({"a": [1, {"b": "c"}]}) is None
    assert "NUL" in (extra_problem({"a": ["ok", "b\x00"]}) or "")
    deep: dict[str, object] = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    assert "deeper" in (extra_problem(deep) or "")
    assert "finite" in (extra_problem({"x": float("inf")}) or "")
