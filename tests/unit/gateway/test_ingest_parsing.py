"""Validation of REST event batches: every bad item with index and reason, all-or-nothing, maximum."""

from __future__ import annotations

import pytest

from services.gateway.ingest import parse_items
from shared.errors import ApiError
from tests.factories import event_dict
from tests.hostile import STORED, hostile_messages

MAX = 64 * 1024


def test_one_event_or_an_array() -> None:
    assert len(parse_items(event_dict(), 10, MAX)) == 1
    assert len(parse_items([event_dict(), event_dict()], 10, MAX)) == 2


def test_every_bad_item_is_listed_and_none_accepted() -> None:
    no_door = event_dict()
    del no_door["door_id"]
    items = [no_door, event_dict(access_result="Maybe"), 7, event_dict(timestamp="yesterday-ish")]
    with pytest.raises(ApiError) as info:
        parse_items(items, 10, MAX)
    error = info.value
    assert error.status_code == 422
    assert [d["index"] for d in error.details] == [0, 1, 2, 3]
    assert "door_id" in error.details[0]["reason"]
    assert "access_result" in error.details[1]["reason"]
    assert "expected a JSON object" in error.details[2]["reason"]
    assert "timestamp" in error.details[3]["reason"]


def test_maximum_and_empty() -> None:
    with pytest.raises(ApiError) as info:
        parse_items([event_dict() for _ in range(3)], 2, MAX)
    assert info.value.status_code == 413
    with pytest.raises(ApiError) as info:
        parse_items([], 2, MAX)
    assert info.value.status_code == 422


def test_values_the_database_cannot_hold_are_422_with_their_index() -> None:
    items = [
        event_dict(),
        event_dict(timestamp="9999-12-31T23:59:59-05:00"),
        event_dict(timestamp="0001-01-01T00:00:00Z"),
        event_dict(timestamp="9999-12-31T23:59:59.999999+00:00"),
        event_dict(person_id="nul\u0000"),
        event_dict(note={"deep": "nul\u0000"}),
    ]
    with pytest.raises(ApiError) as info:
        parse_items(items, 10, MAX)
    assert info.value.status_code == 422
    details = info.value.details
    assert [d["index"] for d in details] == [1, 2, 3, 4, 5]
    assert "out of range" in details[0]["reason"]
    assert details[1]["fields"][0]["type"] == "timestamp_out_of_window"
    assert details[2]["fields"][0]["type"] == "timestamp_out_of_window"
    assert "NUL" in details[3]["reason"]
    assert "NUL" in details[4]["reason"]


def test_an_event_larger_than_the_processor_accepts_is_413_with_its_index() -> None:
    items = [event_dict(), event_dict(), event_dict(blob="x" * 70_000), event_dict()]
    with pytest.raises(ApiError) as info:
        parse_items(items, 10, MAX)
    assert info.value.status_code == 413
    assert info.value.code == "event_too_large"
    assert [d["index"] for d in info.value.details] == [2]
    assert info.value.details[0]["bytes"] > MAX
    # Exactly at the limit is accepted: the limit is on the message the processor receives.
    small = parse_items([event_dict()], 10, MAX)[0]
    assert len(parse_items([event_dict()], 10, len(small.value) + 100)) == 1


def test_the_hostile_corpus_is_answered_per_item_never_raising_anything_else() -> None:
    import orjson

    for message in hostile_messages():
        try:
            item = orjson.loads(message.value or b"")
        except orjson.JSONDecodeError:
            continue  # the route answers 400 before parsing items
        status = 202
        try:
            parse_items(item, 10, MAX)
        except ApiError as exc:
            status = exc.status_code
        assert status in (202, 413, 422), message.name
        assert status == 202 or message.expect != STORED, message.name
