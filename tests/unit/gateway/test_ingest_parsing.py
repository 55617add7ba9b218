"""Validation of REST event batches: every bad item with index and reason, all-or-nothing, maximum."""

from __future__ import annotations

import pytest

from services.gateway.ingest import parse_items
from shared.errors import ApiError
from tests.factories import event_dict


def test_one_event_or_an_array() -> None:
    assert len(parse_items(event_dict(), 10)) == 1
    assert len(parse_items([event_dict(), event_dict()], 10)) == 2


def test_every_bad_item_is_listed_and_none_accepted() -> None:
    no_door = event_dict()
    del no_door["door_id"]
    items = [no_door, event_dict(access_result="Maybe"), 7, event_dict(timestamp="yesterday-ish")]
    with pytest.raises(ApiError) as info:
        parse_items(items, 10)
    error = info.value
    assert error.status_code == 422
    assert [d["index"] for d in error.details] == [0, 1, 2, 3]
    assert "door_id" in error.details[0]["reason"]
    assert "access_result" in error.details[1]["reason"]
    assert "expected a JSON object" in error.details[2]["reason"]
    assert "timestamp" in error.details[3]["reason"]


def test_maximum_and_empty() -> None:
    with pytest.raises(ApiError) as info:
        parse_items([event_dict() for _ in range(3)], 2)
    assert info.value.status_code == 413
    with pytest.raises(ApiError) as info:
        parse_items([], 2)
    assert info.value.status_code == 422
