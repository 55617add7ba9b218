"""The msgspec way into a request body answers exactly what the general way answers.

`messages_of` takes `fast_messages` when it is sure of every event and `general_messages`
(orjson, item by item, the model for whatever the fast path does not take) otherwise. These
tests give both ways the same bodies, generated and hostile, and require the same answer: the
same Kafka messages byte for byte, or the same refusal (status, code, message, details).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.ingest import _wire, fast_messages, general_messages, messages_of
from shared.errors import ApiError
from shared.event_fastpath import fast_record
from shared.events import EventParseError, validate_event
from tests.factories import event_dict
from tests.hostile import hostile_messages
from tests.unit.shared.test_event_fastpath import messages, raw_messages

MAX = 64 * 1024


def _answer(way: Any, body: bytes, max_items: int = 10, max_event_bytes: int = MAX) -> Any:
    try:
        return [tuple(m) for m in way(body, max_items, max_event_bytes)]
    except ApiError as exc:
        return (exc.status_code, exc.code, exc.message, exc.details, exc.headers)


def _same_answer(body: bytes, max_items: int = 10, max_event_bytes: int = MAX) -> Any:
    """`messages_of` answers as `general_messages` does; what the fast path took, it took right."""
    general = _answer(general_messages, body, max_items, max_event_bytes)
    assert _answer(messages_of, body, max_items, max_event_bytes) == general
    fast = fast_messages(body, max_items, max_event_bytes)
    if fast is not None:
        assert [tuple(m) for m in fast] == general, "the fast path accepted what the general path refuses"
    return general


def _body(parts: list[bytes], space: bytes = b"") -> bytes:
    return b"[" + space + (b"," + space).join(parts) + space + b"]"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(raw_messages(), min_size=1, max_size=4),
    st.sampled_from([b"", b" ", b"\n\t"]),
    st.booleans(),
    st.integers(min_value=1, max_value=5),
    st.sampled_from([150, 300, 400, MAX]),
)
def test_raw_bodies_get_the_general_answer(
    parts: list[bytes], space: bytes, single: bool, max_items: int, max_event_bytes: int
) -> None:
    # Hostile bytes in every field (invalid UTF-8, NUL, lone surrogates, numbers beyond every
    # range, deep nesting, duplicate and extra keys, broken JSON), one event or an array.
    body = parts[0] if single else _body(parts, space)
    _same_answer(body, max_items, max_event_bytes)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=4))
def test_generated_events_get_the_general_answer(events: list[dict[str, Any]]) -> None:
    try:
        body = orjson.dumps(events)
    except TypeError:  # an integer beyond 64 bits: not a body anyone can send
        return
    _same_answer(body)


@pytest.mark.parametrize("message", hostile_messages(), ids=lambda m: m.name)
def test_every_hostile_message_alone_and_among_good_events_gets_the_general_answer(message: Any) -> None:
    raw = message.value or b""
    _same_answer(raw)
    good = orjson.dumps(event_dict())
    _same_answer(_body([good, raw, good]))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b" [ ] ",
        b"null",
        b"7",
        b'"text"',
        b"{}",
        b"[{}]",
        b"[[]]",
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"]",
        b"\xef\xbb\xbf[]",
        b"[" + b",".join([b"{}"] * 20_000) + b"]",
        b"[1,2,3",
        b"[] x",
        b"[\x00]",
        b'["\xff"]',
    ],
    ids=lambda b: repr(b[:24]),
)
def test_malformed_bodies_get_the_general_answer_never_anything_else(body: bytes) -> None:
    answer = _same_answer(body)
    assert isinstance(answer, tuple)
    assert answer[0] in (400, 413, 422)


def test_what_the_fast_path_must_not_take_it_leaves_to_the_general_path() -> None:
    good = event_dict()
    cases: dict[str, tuple[bytes, int, int]] = {
        "too many": (orjson.dumps([good] * 3), 2, MAX),
        "empty": (b"[]", 2, MAX),
        "oversized message": (orjson.dumps([good]), 2, 100),
        "NUL inside an id": (orjson.dumps([event_dict(person_id="p\u0000")]), 2, MAX),
        "NUL escaped inside an id": (orjson.dumps([good])[:-2] + b',"door_id":"d\\u0000"}]', 2, MAX),
        "lone surrogate": (orjson.dumps([good])[:-2] + b',"door_id":"\\ud800"}]', 2, MAX),
        "invalid UTF-8": (orjson.dumps([good])[:-2] + b',"door_id":"\xc3\x28"}]', 2, MAX),
        "extra field": (orjson.dumps([event_dict(site={"floor": 2})]), 2, MAX),
        "wrong type": (orjson.dumps([event_dict(door_id=12)]), 2, MAX),
        "timestamp out of window": (orjson.dumps([event_dict(timestamp="0001-01-01T00:00:00Z")]), 2, MAX),
        "huge number": (orjson.dumps([good])[:-2] + b',"door_held_open_time":1e400}]', 2, MAX),
    }
    for name, (body, max_items, max_event_bytes) in cases.items():
        assert fast_messages(body, max_items, max_event_bytes) is None, name
        _same_answer(body, max_items, max_event_bytes)


def test_usual_bodies_take_the_fast_path() -> None:
    events = [event_dict(door_id=f"d{n % 3}", facility_id="hq") for n in range(100)]
    body = orjson.dumps(events)
    fast = fast_messages(body, 100, MAX)
    assert fast is not None
    assert [(m.key, m.value) for m in fast] == [
        (e["door_id"].encode(), validate_event(copy.deepcopy(e)).to_wire()) for e in events
    ]
    single = fast_messages(orjson.dumps(events[0]), 1, MAX)
    assert single is not None
    assert single[0].value == fast[0].value


_held = st.one_of(
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [0.0, 1e15, 9999999999999998.0, 1e16, 1.5e16, 1e21, 1e22, 1.7976931348623157e308, 5e-324]
    ),
    st.integers(min_value=0, max_value=2**53),
)
_ascii_text = st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=20)


@settings(max_examples=1500, deadline=None)
@given(_held, _ascii_text, _ascii_text, st.sampled_from(["", "normal", 'quote"back\\slash', "tab\there"]))
def test_a_wire_message_written_by_msgspec_is_the_models_byte_for_byte(
    held: float, person: str, door: str, device: str
) -> None:
    """Floats on both sides of the point where their shortest form turns to an exponent, every
    ASCII character (controls, quotes and backslashes are escaped) in the texts."""
    data = event_dict(person_id=person, door_id=door, door_held_open_time=held, device_status=device)
    row = fast_record(copy.deepcopy(data))
    try:
        model = validate_event(copy.deepcopy(data)).to_wire()
    except EventParseError:
        assert row is None
        return
    if row is not None:
        assert math.isfinite(row[7])
        assert _wire(row) == model
