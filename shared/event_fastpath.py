"""The event processor's fast validation path: a decoded message straight to its table row.

:class:`shared.events.AccessEvent` costs about 20 µs per event (a pydantic model, a dozen
validators); the processor's hot loop needs a few. :func:`fast_record` handles the shape every
well-behaved producer sends (text ids in ASCII without edge whitespace, a timestamp string or
epoch number, enum words, plain defaults) with explicit checks that use the vocabulary's own
names and functions (:mod:`shared.event_vocabulary`). Anything it is not sure of, it does not
judge: it returns None and the caller asks `AccessEvent`, which accepts it or refuses it with
the reason the dead-letter topic records. So the fast path and the model never disagree on a
verdict; `tests/unit/shared/test_event_fastpath.py` proves with generated messages that every
row it builds is the row `AccessEvent` gives.

Hand-written because no validation library reads these rules (case-insensitive enum words,
true/false words, a moving time window, the storable-text rule) from the vocabulary; a second
schema in msgspec would be a second copy of them.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from shared.event_vocabulary import (
    ACCESS_RESULTS,
    BADGE_STATUSES,
    DEFAULT_DEVICE_STATUS,
    FALSE_WORDS,
    MAX_LENGTH,
    TRUE_WORDS,
    extra_problem,
    parse_timestamp,
    timestamp_problem,
)
from shared.events import (
    AccessEvent,
    EventParseError,
    decode_event_bytes,
    event_record,
    validate_event,
)

__all__ = ["EventRow", "fast_record", "fast_wire", "parse_message", "record_of"]

# A row of `access_events`, in EVENT_COLUMNS order.
EventRow = tuple[Any, ...]

_KNOWN = frozenset(AccessEvent.model_fields)
# Extra keys that name something of the model class (a method, `extra`, pydantic's own) are
# left to the model: whatever it does with them is its verdict.
_MODEL_NAMES = frozenset(dir(AccessEvent))
_MAX_EXACT_INT = 2**53
# Word (lower-cased, stripped) to the stored value: an enum member's `.value` costs a descriptor call.
_RESULT_VALUES = {word: member.value for word, member in ACCESS_RESULTS.items()}
_STATUS_VALUES = {word: member.value for word, member in BADGE_STATUSES.items()}


def _plain_text(value: object, limit: int) -> str | None:
    """`value` if it is text the model keeps unchanged: ASCII (so no lone surrogate, and both
    pydantic's and Python's idea of whitespace agree), no NUL, no edge whitespace, 1..limit
    characters. None means: let the model judge."""
    if (
        type(value) is str
        and value
        and len(value) <= limit
        and value.isascii()
        and value[0] > " "
        and value[-1] > " "
        and "\x00" not in value
    ):
        return value
    return None


def _optional_text(data: dict[str, Any], name: str) -> tuple[bool, str | None]:
    """(sure, value) for badge_id / facility_id: absent, null and "" mean None."""
    value = data.get(name)
    if value is None or value == "":
        return True, None
    text = _plain_text(value, MAX_LENGTH[name])
    return text is not None, text


def fast_record(data: dict[str, Any]) -> EventRow | None:
    """The row `AccessEvent.model_validate(data)` stores, or None when not sure it accepts `data`."""
    event_id = _plain_text(data.get("event_id"), MAX_LENGTH["event_id"])
    person_id = _plain_text(data.get("person_id"), MAX_LENGTH["person_id"])
    door_id = _plain_text(data.get("door_id"), MAX_LENGTH["door_id"])
    if event_id is None or person_id is None or door_id is None:
        return None
    result = data.get("access_result")
    if type(result) is not str:
        return None
    access_result = _RESULT_VALUES.get(result.strip().lower())
    if access_result is None:
        return None
    stamp = data.get("timestamp")
    if type(stamp) not in (str, int, float):
        return None
    try:
        timestamp = parse_timestamp(stamp)
    except Exception:
        return None
    if timestamp_problem(timestamp) is not None:
        return None
    sure, badge_id = _optional_text(data, "badge_id")
    if not sure:
        return None
    sure, facility_id = _optional_text(data, "facility_id")
    if not sure:
        return None
    status = data.get("badge_status")
    if status is None:
        badge_status = None
    elif type(status) is str:
        word = status.strip().lower()
        if word:
            badge_status = _STATUS_VALUES.get(word)
            if badge_status is None:
                return None
        else:
            badge_status = None
    else:
        return None
    held = data.get("door_held_open_time")
    if held is None:
        held_s = 0.0
    elif type(held) is float and math.isfinite(held) and held >= 0:
        held_s = held
    elif type(held) is int and 0 <= held <= _MAX_EXACT_INT:
        held_s = float(held)
    else:
        return None
    entry = data.get("entry_without_badge")
    if entry is None:
        without_badge = False
    elif type(entry) is bool:
        without_badge = entry
    elif type(entry) is str:
        word = entry.strip().lower()
        if word in FALSE_WORDS:
            without_badge = False
        elif word in TRUE_WORDS:
            without_badge = True
        else:
            return None
    else:
        return None
    device = data.get("device_status")
    if device is None:
        device_status = DEFAULT_DEVICE_STATUS
    elif device == "":
        device_status = ""
    else:
        plain = _plain_text(device, MAX_LENGTH["device_status"])
        if plain is None:
            return None
        device_status = plain
    extra_json = None
    if len(data) > len(_KNOWN) or not _KNOWN.issuperset(data):
        extra = {key: value for key, value in data.items() if key not in _KNOWN}
        if extra:
            if not _MODEL_NAMES.isdisjoint(extra) or any(key.startswith("_") for key in extra):
                return None
            if extra_problem(extra) is not None:
                return None
            extra_json = orjson.dumps(extra, default=str).decode()
    return (
        event_id,
        timestamp,
        person_id,
        door_id,
        badge_id,
        access_result,
        badge_status,
        held_s,
        without_badge,
        device_status,
        facility_id,
        extra_json,
    )


# The wire message's field names, in the model's (and the row's) order.
_WIRE_FIELDS = tuple(AccessEvent.model_fields)


def fast_wire(data: dict[str, Any]) -> bytes | None:
    """The bytes `AccessEvent.model_validate(data).to_wire()` gives, or None when not sure.

    The gateway's hot loop: the row of :func:`fast_record` written as the model writes it (its
    fields in order, the timestamp in UTC with `Z`). A message with extra fields is left to the
    model, whose JSON places and encodes them itself."""
    row = fast_record(data)
    if row is None or row[-1] is not None:
        return None
    return orjson.dumps(dict(zip(_WIRE_FIELDS, row, strict=False)), option=orjson.OPT_UTC_Z)


def record_of(data: dict[str, Any]) -> EventRow:
    """The row of a decoded message: the fast path's, else the model's; raises EventParseError
    with the model's reason when the model refuses it."""
    row = fast_record(data)
    if row is not None:
        return row
    event: AccessEvent = validate_event(data)  # raises EventParseError
    return event_record(event)


def parse_message(raw: bytes, max_bytes: int) -> EventRow | tuple[str, str]:
    """One message's row, or (reason, message) for the dead-letter topic: the same verdict and
    reason as :func:`shared.events.parse_event_bytes`. Nothing a message holds escapes from here."""
    try:
        return record_of(decode_event_bytes(raw, max_bytes=max_bytes))
    except EventParseError as exc:
        return exc.reason, exc.message
    except Exception as exc:
        return "invalid_event", f"{type(exc).__name__}: {exc}"
