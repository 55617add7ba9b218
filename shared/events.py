"""The access event: the one source of truth for the wire format (docs/reference.md, "Access events").

Producers (REST ingestion, the load generator) and the event processor parse and serialise
through :class:`AccessEvent`; its rules (limits, words, characters, time window) come from
:mod:`shared.event_vocabulary`, which the upload validators use too.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared.event_vocabulary import (
    ACCESS_RESULTS,
    BADGE_STATUSES,
    DEFAULT_DEVICE_STATUS,
    FALSE_WORDS,
    FORBIDDEN_TEXT,
    MAX_LENGTH,
    TRUE_WORDS,
    AccessResult,
    BadgeStatus,
    extra_problem,
    max_event_bytes,
    parse_timestamp,
    text_problem,
    timestamp_problem,
)

__all__ = [
    "EVENT_COLUMNS",
    "UPLOAD_NAMESPACE",
    "AccessEvent",
    "AccessResult",
    "BadgeStatus",
    "EventParseError",
    "decode_event_bytes",
    "derive_event_id",
    "event_record",
    "parse_event_bytes",
    "parse_timestamp",
    "validate_event",
]

UPLOAD_NAMESPACE = uuid.UUID("6f1c1d7e-3c0a-5b8e-9a57-2d3b8f0e4c11")

_TEXT_FIELDS = (
    "event_id",
    "person_id",
    "door_id",
    "badge_id",
    "device_status",
    "facility_id",
)  # as in _storable


class EventParseError(ValueError):
    """A message that cannot become an AccessEvent; `reason` is short and machine-friendly."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _document_lenient_input(schema: dict[str, Any]) -> None:
    """The JSON schema of what is accepted, not only of the canonical form: ids may be numbers,
    the timestamp epoch milliseconds, `entry_without_badge` 0/1 or a true/false word, and `null`
    stands for a field's default (the validators below). Enum values are also accepted in any
    case; JSON Schema cannot say "case-insensitive", so the documented values are the canonical
    spellings."""
    props = schema.get("properties", {})
    for name in ("event_id", "person_id", "door_id", "badge_id", "facility_id"):
        if name in props:
            props[name] = {"anyOf": [props.pop(name), {"type": "integer"}]}
    if "timestamp" in props:
        props["timestamp"] = {
            "anyOf": [
                {"type": "string", "description": "ISO 8601; a naive time is UTC"},
                {"type": "number", "description": "epoch milliseconds"},
            ]
        }
    if "entry_without_badge" in props:  # also 0/1 and the true/false words of the vocabulary
        props["entry_without_badge"]["anyOf"] = [
            {"type": "boolean"},
            {"type": "integer", "enum": [0, 1]},
            {"type": "string", "description": "yes/no, true/false, y/n, t/f, 1/0 in any case"},
        ]
        props["entry_without_badge"].pop("type", None)
    if "door_held_open_time" in props:  # also a number written as a string
        props["door_held_open_time"] = {"anyOf": [props.pop("door_held_open_time"), {"type": "string"}]}
    for name in ("door_held_open_time", "entry_without_badge", "device_status"):
        if name in props:
            props[name] = {"anyOf": [props.pop(name), {"type": "null"}]}


class AccessEvent(BaseModel):
    """One badge swipe (or door incident). Unknown fields are kept in `extra`."""

    model_config = ConfigDict(
        extra="allow",
        str_strip_whitespace=True,
        frozen=False,
        json_schema_extra=_document_lenient_input,
    )

    event_id: str = Field(min_length=1, max_length=MAX_LENGTH["event_id"])
    timestamp: datetime
    person_id: str = Field(min_length=1, max_length=MAX_LENGTH["person_id"])
    door_id: str = Field(min_length=1, max_length=MAX_LENGTH["door_id"])
    badge_id: str | None = Field(default=None, max_length=MAX_LENGTH["badge_id"])
    access_result: AccessResult
    badge_status: BadgeStatus | None = None
    door_held_open_time: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    entry_without_badge: bool = False
    device_status: str = Field(default=DEFAULT_DEVICE_STATUS, max_length=MAX_LENGTH["device_status"])
    facility_id: str | None = Field(default=None, max_length=MAX_LENGTH["facility_id"])

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_defaults(cls, data: Any) -> Any:
        # Other systems send `null` for "not known"; treat it as the field's default.
        if isinstance(data, dict):
            for name in ("door_held_open_time", "entry_without_badge", "device_status"):
                if name in data and data[name] is None:
                    data = {k: v for k, v in data.items() if k != name}
        return data

    @field_validator("door_held_open_time", mode="before")
    @classmethod
    def _duration_is_not_a_flag(cls, value: object) -> object:
        # `true`/`false` would pass as 1/0 seconds: a producer that sends a flag here is wrong.
        if isinstance(value, bool):
            raise ValueError("door_held_open_time is a number of seconds, not true/false")
        return value

    @field_validator("event_id", "person_id", "door_id", "badge_id", "facility_id", mode="before")
    @classmethod
    def _ids_are_text(cls, value: object) -> object:
        # Numeric ids from CSVs or other producers are fine; they are stored as text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("badge_id", "facility_id", mode="after")
    @classmethod
    def _blank_optional_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: object) -> datetime:
        return parse_timestamp(value)

    @model_validator(mode="after")
    def _storable(self) -> AccessEvent:
        """The vocabulary's checks that make an event storable, in one validator (each validator
        call costs; this is the processor's hot path)."""
        if problem := timestamp_problem(self.timestamp):
            raise PydanticCustomError("timestamp_out_of_window", problem)
        # One search over all text fields (the common case finds nothing); the field is looked
        # for only when there is something to report.
        texts = (
            self.event_id,
            self.person_id,
            self.door_id,
            self.badge_id or "",
            self.device_status,
            self.facility_id or "",
        )
        if FORBIDDEN_TEXT.search("".join(texts)):
            for name, value in zip(_TEXT_FIELDS, texts, strict=True):
                if problem := text_problem(value):
                    raise PydanticCustomError("unstorable_text", f"{name} {problem}")
        if self.__pydantic_extra__ and (problem := extra_problem(self.__pydantic_extra__)):
            raise PydanticCustomError("unstorable_extra", problem)
        return self

    @field_validator("access_result", mode="before")
    @classmethod
    def _result_any_case(cls, value: object) -> object:
        if isinstance(value, str):
            member = ACCESS_RESULTS.get(value.strip().lower())
            if member is None:
                raise ValueError(f"access_result must be one of {', '.join(m.value for m in AccessResult)}")
            return member
        return value

    @field_validator("badge_status", mode="before")
    @classmethod
    def _status_any_case(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None
            member = BADGE_STATUSES.get(value.strip().lower())
            if member is None:
                raise ValueError(f"badge_status must be one of {', '.join(m.value for m in BadgeStatus)}")
            return member
        return value

    @field_validator("entry_without_badge", mode="before")
    @classmethod
    def _bool_words(cls, value: object) -> object:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in FALSE_WORDS:
                return False
            if word in TRUE_WORDS:
                return True
        return value

    @property
    def extra(self) -> dict[str, Any]:
        """Fields the event format does not name, kept verbatim."""
        return dict(self.__pydantic_extra__ or {})

    def extra_json(self) -> str | None:
        extra = self.extra
        if not extra:
            return None
        return orjson.dumps(extra, default=str).decode()

    def to_wire(self) -> bytes:
        """The JSON message as it travels on Kafka: the format's field names, ISO UTC timestamp.

        pydantic-core writes the JSON itself (the same bytes as `orjson.dumps(model_dump(mode=
        "json"))`, in about a third of the time: no intermediate dict), and its bytes object has
        exactly the message's size."""
        return self.__pydantic_serializer__.to_json(self)


def derive_event_id(row: dict[str, Any]) -> str:
    """Deterministic id for an upload row without one: UUIDv5 of the row's canonical JSON.

    The same row uploaded twice gets the same id, so the idempotent sink stores it once.
    """
    canonical = orjson.dumps({k: row[k] for k in sorted(row)}, default=str, option=orjson.OPT_SORT_KEYS)
    return str(uuid.uuid5(UPLOAD_NAMESPACE, canonical.decode()))


# Pydantic error types that are a dead-letter reason of their own.
_OWN_REASONS = frozenset({"timestamp_out_of_window", "unstorable_text", "unstorable_extra"})


def parse_event_bytes(raw: bytes, *, max_bytes: int | None = None) -> AccessEvent:
    """Parse one Kafka message; raises EventParseError with a short reason for the DLQ.

    Any failure, whatever raised it, becomes an EventParseError: one message can never stop
    the partition it is in."""
    return validate_event(decode_event_bytes(raw, max_bytes=max_bytes))


def decode_event_bytes(raw: bytes, *, max_bytes: int | None = None) -> dict[str, Any]:
    """The JSON object of one message, not yet validated; raises EventParseError."""
    max_bytes = max_event_bytes() if max_bytes is None else max_bytes
    if not raw:
        raise EventParseError("empty", "the message has no value (a tombstone or an empty message)")
    if len(raw) > max_bytes:
        raise EventParseError("oversized", f"message of {len(raw)} bytes exceeds {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventParseError("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventParseError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    return data


def validate_event(data: dict[str, Any]) -> AccessEvent:
    """The event a decoded message holds; raises EventParseError with a short reason for the DLQ."""
    try:
        return AccessEvent.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "event"
        kind = str(first.get("type"))
        if kind not in _OWN_REASONS:
            kind = "missing_field" if kind == "missing" else "invalid_field"
            if field == "timestamp" and kind == "invalid_field":
                kind = "invalid_timestamp"
        raise EventParseError(kind, f"{field}: {first.get('msg')}") from None
    except Exception as exc:
        raise EventParseError("invalid_event", f"{type(exc).__name__}: {exc}") from None


EVENT_COLUMNS = (
    "event_id",
    "time",
    "person_id",
    "door_id",
    "badge_id",
    "access_result",
    "badge_status",
    "door_held_open_time",
    "entry_without_badge",
    "device_status",
    "facility_id",
    "extra",
)


def event_record(event: AccessEvent) -> tuple[Any, ...]:
    """The row of `access_events` for `event`, in EVENT_COLUMNS order."""
    return (
        event.event_id,
        event.timestamp,
        event.person_id,
        event.door_id,
        event.badge_id,
        event.access_result.value,
        event.badge_status.value if event.badge_status else None,
        event.door_held_open_time,
        event.entry_without_badge,
        event.device_status,
        event.facility_id,
        event.extra_json(),
    )
