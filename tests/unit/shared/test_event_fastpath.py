"""The fast validation path agrees with `AccessEvent` on every message: same row, same refusal."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.event_fastpath import (
    decode_fast,
    decode_many,
    fast_record,
    fast_row,
    fast_rows,
    fast_wire,
    parse_message,
    record_of,
)
from shared.event_vocabulary import time_window
from shared.events import EventParseError, event_record, parse_event_bytes, validate_event
from tests.hostile import hostile_messages

MAX_BYTES = 64 * 1024

# Values that sit on every rule's edge: words in any case with spaces, blank and whitespace-only
# text, non-ASCII and odd whitespace, NUL and lone surrogates, limits +-1, numbers of each kind.
_edge_text = st.sampled_from(
    [
        "",
        " ",
        "\t",
        " a",
        "a ",
        "\x1c",
        "\x1ca",
        "a\x1f",
        "a\x85",
        "\u00a0b",
        "é",
        "a\x00b",
        "\x00",
        "x" * 100,
        "x" * 101,
        "x" * 200,
        "x" * 201,
        " " + "x" * 200,
        "a\ud800",
        "door-7",
        "p1",
    ]
)
_text = st.one_of(
    _edge_text,
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=8),
)
_number = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.0, -0.0, 2**53, 2**53 + 1, 1e308]),
)
_scalar = st.one_of(st.none(), st.booleans(), _number, _text)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=6,
)
_now = datetime.now(UTC)
_timestamps = st.one_of(
    st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2025-01-01T12:00:00.123456",
            "2025-01-01T12:00:00Z",
            "2025-01-01T12:00:00z",
            " 2025-01-01T12:00:00+05:00 ",
            "9999-12-31T23:59:59-05:00",
            "1969-12-31T23:59:59Z",
            (_now + timedelta(days=2)).isoformat(),
            (_now - timedelta(minutes=1)).isoformat(),
            "1735732800000",
            "-5",
            "",
            "yesterday",
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_fields: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.one_of(_edge_text, _text, _scalar),
    "timestamp": _timestamps,
    "person_id": st.one_of(_edge_text, _text, _scalar),
    "door_id": st.one_of(_edge_text, _text, _scalar),
    "badge_id": st.one_of(_edge_text, _scalar),
    "access_result": st.one_of(
        st.sampled_from(["Granted", "denied", " TIMEOUT ", "error", "Maybe", "", "granted\x00"]), _scalar
    ),
    "badge_status": st.one_of(
        st.sampled_from(["Valid", " expired", "SUSPENDED", "invalid", "Lost", " "]), _scalar
    ),
    "door_held_open_time": st.one_of(
        st.sampled_from([-1, -0.5, -0.0, float("nan"), float("inf"), True, "1.5", 2**53 + 1]), _scalar
    ),
    "entry_without_badge": st.one_of(st.sampled_from(["yes", " F ", "0", "maybe", "", "TRUE"]), _scalar),
    "device_status": st.one_of(_edge_text, _scalar),
    "facility_id": st.one_of(_edge_text, _scalar),
}
_extra_keys = st.one_of(
    st.sampled_from(["site", "extra", "model_config", "_private", "to_wire", "zone", "a\x00b", "\ud800"]),
    st.text(max_size=6),
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message (optional fields present or not) with up to three fields made hostile or
    removed, and maybe extra fields: every rule gets hit while the rest of the message is good."""
    data: dict[str, Any] = {
        "event_id": draw(st.uuids().map(str)),
        "timestamp": draw(
            st.sampled_from(["2025-01-01T12:00:00.123456", "2025-06-01T08:00:00Z", 1735732800000])
        ),
        "person_id": "p1",
        "door_id": "d1",
        "access_result": draw(st.sampled_from(["Granted", "denied"])),
    }
    optional = {
        "badge_id": "b1",
        "badge_status": "Valid",
        "door_held_open_time": 2.5,
        "entry_without_badge": False,
        "device_status": "normal",
        "facility_id": "hq",
    }
    for name, value in optional.items():
        if draw(st.booleans()):
            data[name] = value
    for name in draw(st.lists(st.sampled_from(sorted(_fields)), min_size=1, max_size=2, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            data.pop(name, None)
        else:
            data[name] = draw(_fields[name])
    for key in draw(st.lists(_extra_keys, max_size=2)):
        data[key] = draw(_json)
    return data


def _model_verdict(data: dict[str, Any]) -> tuple[Any, ...] | tuple[str, str]:
    try:
        return event_record(validate_event(copy.deepcopy(data)))
    except EventParseError as exc:
        return ("refused", exc.reason, exc.message)


def _same_row(fast: tuple[Any, ...], model: tuple[Any, ...]) -> None:
    assert fast == model
    assert [type(v) for v in fast] == [type(v) for v in model]
    assert fast[1].utcoffset() == model[1].utcoffset() == timedelta(0)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_a_row_from_the_fast_path_is_the_row_the_model_stores(data: dict[str, Any]) -> None:
    model = _model_verdict(data)
    fast = fast_record(copy.deepcopy(data))
    if fast is not None:
        assert model[0] != "refused", f"fast path accepted what the model refuses: {model}"
        _same_row(fast, model)
    # Through the fallback, the verdict is the model's in every case, reason and message included.
    try:
        combined: tuple[Any, ...] = record_of(copy.deepcopy(data))
    except EventParseError as exc:
        combined = ("refused", exc.reason, exc.message)
    assert combined == model


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_a_wire_message_from_the_fast_path_is_the_models_byte_for_byte(data: dict[str, Any]) -> None:
    wire = fast_wire(copy.deepcopy(data))
    if wire is None:
        return
    try:
        event = validate_event(copy.deepcopy(data))
    except EventParseError as exc:
        raise AssertionError(f"fast wire path accepted what the model refuses: {exc.reason}") from exc
    assert wire == event.to_wire()


@settings(max_examples=500, deadline=None)
@given(messages())
def test_the_bytes_verdict_is_the_one_of_parse_event_bytes(data: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(data)
    except TypeError:  # an integer beyond 64 bits: not a message anyone can send
        return
    _compare_bytes(raw)


def _compare_bytes(raw: bytes, max_bytes: int = MAX_BYTES) -> None:
    """The msgspec path, when it takes a message, builds the row the model stores from the same
    bytes; whichever path a message takes, the verdict is the model's."""
    try:
        expected: Any = event_record(parse_event_bytes(raw, max_bytes=max_bytes))
    except EventParseError as exc:
        expected = (exc.reason, exc.message)
    message = decode_fast(raw, max_bytes)
    if message is not None:
        fast = fast_row(message, time_window())
        if fast is not None:
            assert len(expected) == 12, f"msgspec path accepted what the model refuses: {expected}"
            _same_row(fast, expected)
    assert parse_message(raw, max_bytes) == expected


@pytest.mark.parametrize("message", hostile_messages(), ids=lambda m: m.name)
def test_every_hostile_message_gets_the_verdict_of_the_model(message: Any) -> None:
    _compare_bytes(message.value or b"")


@pytest.mark.parametrize(
    "data",
    [
        # The original load generator's message: no key, naive timestamp.
        {
            "event_id": "x1",
            "timestamp": "2025-01-01T12:00:00.123456",
            "person_id": "p1",
            "door_id": "d1",
            "access_result": "Granted",
        },
        {
            "event_id": "x2",
            "timestamp": 1735732800000,
            "person_id": "p1",
            "door_id": "d1",
            "badge_id": "b1",
            "access_result": "denied",
            "badge_status": "valid",
            "door_held_open_time": 3,
            "entry_without_badge": "no",
            "device_status": "normal",
            "facility_id": "hq",
            "site": {"floor": 2},
        },
        {
            "event_id": "x3",
            "timestamp": "2025-01-01T12:00:00+02:00",
            "person_id": "p1",
            "door_id": "d1",
            "access_result": "Granted",
            "badge_id": None,
            "badge_status": None,
            "door_held_open_time": None,
        },
    ],
)
def test_what_producers_send_takes_the_fast_path(data: dict[str, Any]) -> None:
    fast = fast_record(copy.deepcopy(data))
    assert fast is not None
    _same_row(fast, event_record(validate_event(copy.deepcopy(data))))
    wire = fast_wire(copy.deepcopy(data))
    if "site" in data:
        assert wire is None  # extra fields: the model writes them
    else:
        assert wire == validate_event(data).to_wire()


# Raw JSON values, written as bytes so they can be what no encoder writes: invalid UTF-8, NUL
# and lone surrogates as escapes and raw, numbers beyond every range, deep nesting, literals
# JSON has not got, odd spacing; next to the good values of each field.
_GOOD_VALUES: dict[str, list[bytes]] = {
    "event_id": [b'"e-1"', b'"\\u0065-2"'],
    "timestamp": [
        b'"2025-06-01T08:00:00Z"',
        b'"2025-06-01T08:00:00.5+02:00"',
        b'"2025-06-01T08:00:00"',
        b"1748764800000",
        b"1748764800000.5",
        b'"1748764800000"',
    ],
    "person_id": [b'"p1"'],
    "door_id": [b'"d1"'],
    "access_result": [b'"Granted"', b'"denied"', b'" Timeout "'],
    "badge_id": [b'"b1"', b"null", b'""'],
    "badge_status": [b'"Valid"', b'"expired"', b"null", b'""'],
    "door_held_open_time": [b"2.5", b"3", b"0", b"null", b"1e2", b"-0.0"],
    "entry_without_badge": [b"true", b"false", b'"yes"', b'"0"', b"null"],
    "device_status": [b'"normal"', b'""', b"null"],
    "facility_id": [b'"hq"', b"null"],
}
_HOSTILE_VALUES = [
    b'"a\\u0000b"',
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\xff\xfe"',
    b'"\xc3\x28"',
    b'"\xed\xa0\x80"',
    b'"a\x00b"',
    b'"\xc3\xa9"',
    b'"\\u00e9"',
    b'"\\u2028"',
    b"123456789012345678901234567890",
    b"-123456789012345678901234567890",
    b"18446744073709551616",
    b"9223372036854775808",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"00",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
    b"true",
    b"True",
    b"nul",
    b"[]",
    b"{}",
    b'{"a": [1, {"b": null}]}',
    b"[" * 600 + b"]" * 600,
    b'{"a":' * 300 + b"1" + b"}" * 300,
    b'"' + b"x" * 70_000 + b'"',
    b'"' + b"x" * 201 + b'"',
    b'"  "',
    b'"\t"',
    b"",
]
_KEYS = [
    *(name.encode() for name in _GOOD_VALUES),
    b"site",
    b"extra",
    b"_private",
    b"model_config",
    b"event_id\\u0000",
    b"\\ud800",
    b"\xff",
    b"a\x00",
]


@st.composite
def raw_messages(draw: st.DrawFn) -> bytes:
    """A message as bytes: every field given a good raw value, then some made hostile, dropped,
    repeated (the last of duplicate keys wins in both decoders, or the decoders disagree and the
    test says so), or extra ones added; maybe wrapped in bytes that break the JSON."""
    pairs = [(name.encode(), draw(st.sampled_from(values))) for name, values in _GOOD_VALUES.items()]
    pairs = [pair for pair in pairs if pair[0].decode() in REQUIRED or draw(st.booleans())]
    for _ in range(draw(st.integers(0, 3))):
        index = draw(st.integers(0, len(pairs) - 1))
        change = draw(st.integers(0, 3))
        if change == 0:
            pairs[index] = (pairs[index][0], draw(st.sampled_from(_HOSTILE_VALUES)))
        elif change == 1:
            pairs.pop(index)
            if not pairs:
                break
        elif change == 2:
            pairs.append(
                (pairs[index][0], draw(st.sampled_from(_HOSTILE_VALUES + _GOOD_VALUES["person_id"])))
            )
        else:
            pairs.append((draw(st.sampled_from(_KEYS)), draw(st.sampled_from([*_HOSTILE_VALUES, b"1"]))))
    space = draw(st.sampled_from([b"", b" ", b"\n\t "]))
    body = b"{" + b",".join(space + b'"' + key + b'":' + space + value for key, value in pairs) + b"}"
    wrap = draw(
        st.sampled_from(
            [(b"", b""), (b"", b""), (b" ", b"\n"), (b"\xef\xbb\xbf", b""), (b"", b"x"), (b"[", b"]")]
        )
    )
    return wrap[0] + body + wrap[1]


REQUIRED = ("event_id", "timestamp", "person_id", "door_id", "access_result")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_messages())
def test_the_msgspec_path_stores_exactly_what_the_model_stores_from_the_same_bytes(raw: bytes) -> None:
    _compare_bytes(raw)


@settings(max_examples=300, deadline=None)
@given(raw_messages(), st.integers(min_value=1, max_value=400))
def test_the_size_limit_holds_on_the_msgspec_path(raw: bytes, max_bytes: int) -> None:
    _compare_bytes(raw, max_bytes)


def test_what_producers_send_takes_the_msgspec_path() -> None:
    raw = orjson.dumps(
        {
            "event_id": "x1",
            "timestamp": _now.isoformat(),
            "person_id": "p1",
            "door_id": "d1",
            "badge_id": "b1",
            "access_result": "Granted",
            "badge_status": "Valid",
            "facility_id": "f1",
        }
    )
    message = decode_fast(raw, MAX_BYTES)
    assert message is not None
    fast = fast_row(message, time_window())
    assert fast is not None
    _same_row(fast, event_record(parse_event_bytes(raw, max_bytes=MAX_BYTES)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_messages(), max_size=12), st.integers(min_value=1, max_value=MAX_BYTES))
def test_a_batch_gets_what_its_messages_get_one_at_a_time(raws: list[bytes], max_bytes: int) -> None:
    """The processor decodes and checks a batch in one loop each: nothing one message leaves
    behind may change the verdict on the next (every message's row is also proven to be the
    model's by the tests above)."""
    window = time_window()
    messages = decode_many(raws, max_bytes)
    assert messages == [decode_fast(raw, max_bytes) for raw in raws]
    one_at_a_time = [fast_row(message, window) if message is not None else None for message in messages]
    assert fast_rows(messages, window) == one_at_a_time
    assert fast_rows(messages[::-1], window) == one_at_a_time[::-1]
