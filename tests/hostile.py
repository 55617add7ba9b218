"""A corpus of hostile access-event messages, shared by the processor's regression tests, the
ingestion tests and the fuzz suite.

Each message carries its own `event_id` (when it is a JSON object at all), so a test can tell
where every one of them ended: stored, or dead-lettered with `reason`. `expect` is the dead-letter
reason, `STORED`, or `EITHER` when the parser's own verdict decides (wrong types that lax
coercion may accept, such as an integer id). Build a fresh corpus per test: ids are random.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from tests.factories import event_dict

STORED = "stored"
EITHER = "either"

# One value of each JSON type, and a few that stress a parser: put in every field in turn.
WRONG_TYPES: dict[str, Any] = {
    "list": [1, 2],
    "object": {"a": 1},
    "bool": True,
    "float": 1.5,
    "null": None,
    "int64_max": 2**63 - 1,
    "negative": -1,
    "empty_string": "",
    "long_string": "x" * 5000,
}
EVENT_FIELDS = (
    "event_id",
    "timestamp",
    "person_id",
    "door_id",
    "badge_id",
    "access_result",
    "badge_status",
    "door_held_open_time",
    "entry_without_badge",
    "device_status",
    "facility_id",
)


@dataclass(frozen=True)
class Hostile:
    name: str
    value: bytes | None  # None: a tombstone (no value at all)
    expect: str  # a dead-letter reason, STORED or EITHER
    event_id: str | None = None  # set when the message is an object with a string event_id


def _event(**overrides: Any) -> tuple[str, dict[str, Any]]:
    event_id = "hostile-" + str(uuid.uuid4())
    data = event_dict(event_id=event_id)
    data.update(overrides)
    return event_id, data


def _obj(name: str, expect: str, **overrides: Any) -> Hostile:
    _, data = _event(**overrides)
    given = data.get("event_id")
    # An integer id is stored as text; anything else cannot be stored under an id.
    event_id = str(given) if isinstance(given, str | int) and not isinstance(given, bool) else None
    return Hostile(name, orjson.dumps(data), expect, event_id)


def _missing(name: str, *fields: str) -> Hostile:
    _, data = _event()
    for field in fields:
        data.pop(field)
    return Hostile(name, orjson.dumps(data), "missing_field", data.get("event_id"))


def _raw(name: str, expect: str, tail: bytes) -> Hostile:
    """An event whose JSON ends with `tail` (raw bytes orjson would not write), e.g. `, "x": NaN`."""
    event_id, data = _event()
    return Hostile(name, orjson.dumps(data)[:-1] + tail + b"}", expect, event_id)


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def hostile_messages() -> list[Hostile]:
    corpus = [
        # Dates: overflow on conversion, out of the window, malformed offsets, epoch extremes.
        _obj("ts_overflow_on_utc", "invalid_timestamp", timestamp="9999-12-31T23:59:59-05:00"),
        _obj("ts_year_1", "timestamp_out_of_window", timestamp="0001-01-01T00:00:00Z"),
        _obj("ts_max", "timestamp_out_of_window", timestamp="9999-12-31T23:59:59.999999+00:00"),
        _obj("ts_far_future", "timestamp_out_of_window", timestamp="2999-01-01T00:00:00Z"),
        _obj("ts_year_0", "invalid_timestamp", timestamp="0000-01-01T00:00:00Z"),
        _obj("ts_offset_24h", "invalid_timestamp", timestamp="2025-01-01T00:00:00+24:00"),
        _obj("ts_offset_99h", "invalid_timestamp", timestamp="2025-01-01T00:00:00+99:00"),
        _obj("ts_epoch_huge_int", "invalid_timestamp", timestamp=10**18),
        _obj("ts_epoch_huge_float", "invalid_timestamp", timestamp=1.7e300),
        _obj("ts_epoch_digits_40", "invalid_timestamp", timestamp="1" * 40),
        _obj("ts_epoch_negative", "timestamp_out_of_window", timestamp=-1),
        _obj("ts_long_text", "invalid_timestamp", timestamp="2025-01-01" + " " * 10_000 + "x"),
        _obj("ts_offset_accepted", STORED, timestamp="2025-01-01T00:00:00+23:59"),
        # Numbers: NaN and infinity (not JSON), huge values.
        _raw("nan_literal", "invalid_json", b', "door_held_open_time": NaN'),
        _raw("infinity_literal", "invalid_json", b', "door_held_open_time": Infinity'),
        _raw("overflowing_float", "invalid_json", b', "door_held_open_time": 1e999'),
        _obj("nan_word", "invalid_field", door_held_open_time="NaN"),
        _obj("infinity_word", "invalid_field", door_held_open_time="-Infinity"),
        _obj("huge_duration", STORED, door_held_open_time=1e308),
        _raw("huge_int_extra", EITHER, b', "counter": 123456789012345678901234567890'),
        _raw("huge_int_id", "invalid_field", b', "door_id": 123456789012345678901234567890'),
        # Nesting: beyond what the store keeps, beyond what the JSON parser takes.
        _raw("deep_extra_40", "unstorable_extra", b', "x": ' + _nested(40)),
        _raw("deep_extra_500", "unstorable_extra", b', "x": ' + _nested(500)),
        _raw("deep_array_5000", "invalid_json", b', "x": ' + b"[" * 5000 + b"]" * 5000),
        _obj("nested_ok", STORED, x={"a": {"b": [1, 2, {"c": "d"}]}}),
        # Encoding and characters.
        _raw("invalid_utf8", "invalid_json", b', "x": "\xff\xfe\xfd"'),
        _raw("lone_surrogate", "invalid_json", b', "x": "\\ud800"'),
        _raw("overlong_utf8", "invalid_json", b', "x": "\xc0\xaf"'),
        _obj("nul_in_person", "unstorable_text", person_id="p\u0000"),
        _obj("nul_in_door", "unstorable_text", door_id="\u0000"),
        _obj("nul_in_facility", "unstorable_text", facility_id="f\u00001"),
        _obj("nul_in_extra_value", "unstorable_extra", note="a\u0000b"),
        _obj("nul_in_extra_key", "unstorable_extra", **{"n\u0000te": "ab"}),
        _obj("nul_deep_in_extra", "unstorable_extra", x={"y": ["ok", "bad\u0000"]}),
        _obj("unicode_ok", STORED, person_id="персона-🙂", note="\uffff\u200b"),
        # Size and shape.
        _obj("one_megabyte_string", "oversized", note="x" * 1_000_000),
        # Just under the producer's 1 MiB request limit: too large to dead-letter with headers.
        Hostile("near_kafka_limit", b'{"x": "' + b"y" * 1_048_280 + b'"}', "oversized"),
        Hostile("empty_bytes", b"", "empty"),
        Hostile("tombstone", None, "empty"),
        Hostile("whitespace_only", b"   \n", "invalid_json"),
        Hostile("json_array", orjson.dumps([event_dict()]), "not_an_object"),
        Hostile("json_string", b'"event"', "not_an_object"),
        Hostile("json_number", b"42", "not_an_object"),
        Hostile("json_null", b"null", "not_an_object"),
        Hostile("truncated", b'{"event_id": "x", "timestamp": ', "invalid_json"),
        Hostile("trailing_garbage", orjson.dumps(event_dict()) + b"garbage", "invalid_json"),
        _missing("missing_required", "person_id", "door_id", "access_result"),
        _missing("missing_event_id", "event_id"),
    ]
    for field in EVENT_FIELDS:
        for kind, value in WRONG_TYPES.items():
            corpus.append(_obj(f"wrong_type_{field}_{kind}", EITHER, **{field: value}))
    return corpus
