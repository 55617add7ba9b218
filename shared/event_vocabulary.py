"""The access-event vocabulary: every rule an event must pass, defined once.

The JSON parser (:class:`shared.events.AccessEvent`, used by REST ingestion and the event
processor), the CSV row validator and the Arrow chunk parser of uploads all take their field
limits, enum values, true/false words, accepted characters and timestamp window from here, so
an event is accepted or refused for the same reason whichever way it arrives. A faster
validator must use these names too (and be proven equal to `AccessEvent`).

The rules guarantee that an accepted event can be stored: PostgreSQL text and jsonb cannot hold
a NUL character, `timestamptz` turns the extremes of Python's datetime range into `-infinity`
and `infinity`, and nothing outside the window is a plausible badge swipe.

Three settings (environment or `.env`, read once per process, checked at service start):
`EVENT_TIME_MIN`, `EVENT_TIME_MAX_AHEAD` and `MAX_EVENT_BYTES`; see :class:`EventLimits`.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ACCESS_RESULTS",
    "BADGE_STATUSES",
    "DEFAULT_DEVICE_STATUS",
    "FALSE_WORDS",
    "FORBIDDEN_TEXT",
    "MAX_EXTRA_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_LENGTH",
    "REQUIRED_FIELDS",
    "TRUE_WORDS",
    "AccessResult",
    "BadgeStatus",
    "EventLimits",
    "extra_problem",
    "get_event_limits",
    "max_event_bytes",
    "parse_timestamp",
    "set_event_limits",
    "text_problem",
    "time_window",
    "timestamp_problem",
    "window_description",
]


class AccessResult(StrEnum):
    GRANTED = "Granted"
    DENIED = "Denied"
    TIMEOUT = "Timeout"
    ERROR = "Error"


class BadgeStatus(StrEnum):
    VALID = "Valid"
    INVALID = "Invalid"
    EXPIRED = "Expired"
    SUSPENDED = "Suspended"


# Enum values are matched case-insensitively, after stripping whitespace.
ACCESS_RESULTS: dict[str, AccessResult] = {m.value.lower(): m for m in AccessResult}
BADGE_STATUSES: dict[str, BadgeStatus] = {m.value.lower(): m for m in BadgeStatus}

# Words for `entry_without_badge` (compared lower-cased, stripped); the empty cell is false.
TRUE_WORDS: frozenset[str] = frozenset({"1", "true", "yes", "y", "t"})
FALSE_WORDS: frozenset[str] = frozenset({"", "0", "false", "no", "n", "f"})

REQUIRED_FIELDS = ("event_id", "timestamp", "person_id", "door_id", "access_result")
MAX_ID_LENGTH = 200
# Longest value, in characters, of each text field.
MAX_LENGTH: dict[str, int] = {
    "event_id": MAX_ID_LENGTH,
    "person_id": MAX_ID_LENGTH,
    "door_id": MAX_ID_LENGTH,
    "badge_id": MAX_ID_LENGTH,
    "facility_id": MAX_ID_LENGTH,
    "device_status": 100,
}
DEFAULT_DEVICE_STATUS = "normal"

# Characters no text field (nor any string inside the extra fields) may hold: NUL, which
# PostgreSQL text and jsonb cannot store, and lone surrogates, which are not Unicode scalar
# values and cannot be encoded as UTF-8.
FORBIDDEN_TEXT = re.compile("[\x00\ud800-\udfff]")
# Extra fields are kept as JSON; deeper nesting than this is refused (orjson itself stops at 254).
MAX_EXTRA_DEPTH = 32


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    found = FORBIDDEN_TEXT.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character, which cannot be stored"
    return "contains a lone surrogate, which is not valid Unicode"


def extra_problem(extra: dict[str, Any]) -> str | None:
    """Why the unknown fields of an event cannot be kept as JSON, or None."""
    stack: list[tuple[Any, int, str]] = [(extra, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_EXTRA_DEPTH:
                return f"{where or 'extra fields'} nest deeper than {MAX_EXTRA_DEPTH} levels"
            for key, item in value.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and (problem := text_problem(key)):
                    return f"field name {name!r} {problem}"
                stack.append((item, depth + 1, name))
        elif isinstance(value, list):
            if depth > MAX_EXTRA_DEPTH:
                return f"{where} nests deeper than {MAX_EXTRA_DEPTH} levels"
            stack.extend((item, depth + 1, where) for item in value)
        elif isinstance(value, str):
            if problem := text_problem(value):
                return f"{where} {problem}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{where} is not a finite number"
    try:
        orjson.dumps(extra)
    except TypeError as exc:  # e.g. an integer beyond 64 bits
        return f"extra fields cannot be kept as JSON: {exc}"
    return None


class EventLimits(BaseSettings):
    """The configurable part of the vocabulary (environment variables, also read from `.env`)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    event_time_min: datetime = Field(
        datetime(1970, 1, 1, tzinfo=UTC),
        validation_alias="EVENT_TIME_MIN",
        description="earliest accepted event time (ISO 8601; naive = UTC)",
    )
    event_time_max_ahead_s: float = Field(
        86_400.0,
        ge=0,
        le=366 * 86_400,
        validation_alias="EVENT_TIME_MAX_AHEAD",
        description="seconds an event time may lie ahead of the server's clock (clock skew, time zones)",
    )
    max_event_bytes: int = Field(
        64 * 1024,
        ge=1024,
        # Kafka's default message.max.bytes is 1 MiB; leave room for the record's overhead.
        le=1000 * 1024,
        validation_alias=AliasChoices("MAX_EVENT_BYTES", "EVENT_PROCESSOR_MAX_MESSAGE_BYTES"),
        description="largest event as published to Kafka (its JSON), at ingestion and in the processor",
    )

    @field_validator("event_time_min", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@lru_cache(maxsize=1)
def _from_environment() -> EventLimits:
    return EventLimits()


_override: list[EventLimits] = []


def get_event_limits() -> EventLimits:
    """The limits in force in this process: the environment's, unless set explicitly."""
    return _override[-1] if _override else _from_environment()


def set_event_limits(limits: EventLimits | None) -> None:
    """Use `limits` in this process from now on (None: the environment's again)."""
    _override.clear()
    if limits is not None:
        _override.append(limits)
    _from_environment.cache_clear()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(value: object) -> datetime:
    """ISO 8601 string or epoch milliseconds (int, float or digit string) as an aware UTC time.

    Raises ValueError (never OverflowError) for anything that is not a representable instant.
    The window is checked separately (:func:`timestamp_problem`).
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise ValueError("timestamp must be an ISO 8601 string or epoch milliseconds, not a boolean")
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("timestamp must be a finite number of epoch milliseconds")
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            raise ValueError(f"epoch milliseconds {value!r} are out of range") from None
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("timestamp is empty")
        if len(text) > 64:
            raise ValueError("timestamp is longer than 64 characters")
        if text.lstrip("-").isdigit():
            return parse_timestamp(int(text))
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is neither ISO 8601 nor epoch milliseconds") from None
    else:
        raise ValueError("timestamp must be an ISO 8601 string or epoch milliseconds")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:59:59-05:00 is valid ISO 8601, but its UTC instant is past year 9999.
        raise ValueError(f"timestamp {value!r} is out of range once converted to UTC") from None


# (monotonic expiry, limits, earliest, latest): the window at "now", reused for a second, so the
# hot path does not read the clock per event. A second late on the upper bound is immaterial.
_window_cache: list[tuple[float, EventLimits, datetime, datetime]] = []


def time_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The accepted event times [earliest, latest] (both inclusive) at `now` (default: the clock)."""
    limits = get_event_limits()
    if now is None:
        if _window_cache and _window_cache[0][0] > time.monotonic() and _window_cache[0][1] is limits:
            return _window_cache[0][2], _window_cache[0][3]
        now = datetime.now(UTC)
        window = limits.event_time_min, now + timedelta(seconds=limits.event_time_max_ahead_s)
        _window_cache[:] = [(time.monotonic() + 1.0, limits, *window)]
        return window
    return limits.event_time_min, now + timedelta(seconds=limits.event_time_max_ahead_s)


def window_description() -> str:
    """The accepted window in words, the same at any moment (for error messages)."""
    limits = get_event_limits()
    return (
        f"from {limits.event_time_min.isoformat()} to {limits.event_time_max_ahead_s:g}s ahead of the "
        "server's clock; EVENT_TIME_MIN, EVENT_TIME_MAX_AHEAD"
    )


def timestamp_problem(value: datetime, now: datetime | None = None) -> str | None:
    """Why an (aware) event time is outside the accepted window, or None."""
    earliest, latest = time_window(now)
    if value < earliest:
        return f"timestamp {value.isoformat()} is before the earliest accepted, {earliest.isoformat()}"
    if value > latest:
        ahead = get_event_limits().event_time_max_ahead_s
        return f"timestamp {value.isoformat()} is more than {ahead:g}s ahead of the server's clock"
    return None


def max_event_bytes() -> int:
    """Largest event (its JSON as published to Kafka) ingestion and the processor accept."""
    return get_event_limits().max_event_bytes
