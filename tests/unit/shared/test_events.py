from __future__ import annotations

from datetime import UTC, datetime

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from shared.events import AccessEvent, AccessResult, EventParseError, derive_event_id, parse_event_bytes

LOAD_GENERATOR_MESSAGE = {
    "event_id": "abc",
    "timestamp": "2025-01-01T12:00:00.123456",
    "person_id": "p1",
    "door_id": "d1",
    "access_result": "Granted",
}


def test_load_generator_message_is_accepted_and_naive_time_is_utc() -> None:
    event = AccessEvent.model_validate(LOAD_GENERATOR_MESSAGE)
    assert event.timestamp == datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert event.access_result is AccessResult.GRANTED
    assert event.door_held_open_time == 0
    assert event.entry_without_badge is False
    assert event.device_status == "normal"
    assert event.badge_id is None


@pytest.mark.parametrize("value", [1735732800123, "1735732800123", 1735732800123.0])
def test_epoch_milliseconds(value: object) -> None:
    event = AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "timestamp": value})
    assert event.timestamp == datetime(2025, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)


def test_offset_times_are_converted_to_utc() -> None:
    event = AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "timestamp": "2025-01-01T14:00:00+02:00"})
    assert event.timestamp == datetime(2025, 1, 1, 12, tzinfo=UTC)
    event = AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "timestamp": "2025-01-01T12:00:00Z"})
    assert event.timestamp.tzinfo == UTC


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("granted", "Granted"), ("DENIED", "Denied"), (" timeout ", "Timeout"), ("Error", "Error")],
)
def test_access_result_is_case_insensitive(raw: str, expected: str) -> None:
    assert (
        AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "access_result": raw}).access_result == expected
    )


def test_badge_status_is_case_insensitive_and_optional() -> None:
    event = AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "badge_status": "expired"})
    assert event.badge_status == "Expired"
    assert AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "badge_status": ""}).badge_status is None


def test_unknown_fields_are_kept_and_travel_on_the_wire() -> None:
    event = AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, "reader_firmware": "2.1", "zone": {"a": 1}})
    assert event.extra == {"reader_firmware": "2.1", "zone": {"a": 1}}
    assert orjson.loads(event.extra_json() or "null") == {"reader_firmware": "2.1", "zone": {"a": 1}}
    again = AccessEvent.model_validate(orjson.loads(event.to_wire()))
    assert again == event


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"person_id": ""}, "person_id"),
        ({"door_id": "   "}, "door_id"),
        ({"access_result": "Maybe"}, "access_result"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"badge_status": "Lost"}, "badge_status"),
        ({"door_held_open_time": -1}, "door_held_open_time"),
        ({"door_held_open_time": False}, "door_held_open_time"),
    ],
)
def test_invalid_fields_are_rejected_with_their_name(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        AccessEvent.model_validate({**LOAD_GENERATOR_MESSAGE, **patch})
    assert info.value.errors()[0]["loc"][0] == field


def test_missing_required_field() -> None:
    data = dict(LOAD_GENERATOR_MESSAGE)
    del data["door_id"]
    with pytest.raises(EventParseError) as info:
        parse_event_bytes(orjson.dumps(data))
    assert info.value.reason == "missing_field"
    assert "door_id" in info.value.message


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"{not json", "invalid_json"), (b"[1,2]", "not_an_object"), (b"x" * 70_000, "oversized")],
)
def test_unparseable_messages_have_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(EventParseError) as info:
        parse_event_bytes(raw)
    assert info.value.reason == reason


def test_derived_event_id_is_deterministic_and_order_independent() -> None:
    row = {"Timestamp": "2025-01-01 10:00", "Person ID": "p1", "Device name": "d1"}
    assert derive_event_id(row) == derive_event_id(dict(reversed(list(row.items()))))
    assert derive_event_id(row) != derive_event_id({**row, "Person ID": "p2"})


def test_the_documented_schema_admits_every_lenient_form_the_model_accepts() -> None:
    """The OpenAPI document of `POST /api/v1/events` is this schema: what the model accepts
    (numeric ids, epoch milliseconds, 0/1 and yes/no flags, null for defaults) must validate."""
    schema = AccessEvent.model_json_schema()
    lenient = {
        "event_id": 7,
        "timestamp": 1735732800000,
        "person_id": 12,
        "door_id": 3,
        "access_result": "Granted",
        "entry_without_badge": "yes",
        "door_held_open_time": None,
        "device_status": None,
    }
    AccessEvent.model_validate(lenient)
    jsonschema.validate(lenient, schema)
    jsonschema.validate({**lenient, "entry_without_badge": 0, "door_held_open_time": "2.5"}, schema)
