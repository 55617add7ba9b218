"""The access event: the one source of truth for the wire format (CONTRACT section 4).

Producers (REST ingestion, the load generator), the event processor and CSV uploads all parse
and serialise through :class:`AccessEvent`, so a rule changes in exactly one place.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "EVENT_COLUMNS",
    "UPLOAD_NAMESPACE",
    "AccessEvent",
    "AccessResult",
    "BadgeStatus",
    "EventParseError",
    "derive_event_id",
    "event_record",
    "parse_event_bytes",
    "parse_timestamp",
]

# Events whose timestamps are more than this far from "now" are almost certainly unit mix-ups
# (seconds sent as milliseconds, microseconds as milliseconds) and are rejected.
_MIN_EPOCH_MS = 0
_MAX_EPOCH_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

UPLOAD_NAMESPACE = uuid.UUID("6f1c1d7e-3c0a-5b8e-9a57-2d3b8f0e4c11")


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


_RESULTS = {m.value.lower(): m for m in AccessResult}
_BADGE_STATUSES = {m.value.lower(): m for m in BadgeStatus}


class EventParseError(ValueError):
    """A message that cannot become an AccessEvent; `reason` is short and machine-friendly."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_timestamp(value: object) -> datetime:
    """ISO 8601 string or epoch milliseconds (int, float or digit string); naive means UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise ValueError("timestamp must be an ISO 8601 string or epoch milliseconds, not a boolean")
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("timestamp must be a finite number of epoch milliseconds")
        if not _MIN_EPOCH_MS <= value <= _MAX_EPOCH_MS:
            raise ValueError("epoch milliseconds out of range")
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("timestamp is empty")
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
    return parsed.astimezone(UTC)


def _document_lenient_input(schema: dict[str, Any]) -> None:
    """The JSON schema of what is accepted, not only of the canonical form: ids may be numbers,
    the timestamp epoch milliseconds, and `null` stands for a field's default (the validators
    below). Enum values and true/false words are also accepted in any case; JSON Schema cannot
    say "case-insensitive", so the documented values are the canonical spellings."""
    props = schema.get("properties", {})
    for name in ("event_id", "person_id", "door_id", "badge_id", "facility_id"):
        if name in props:
            props[name] = {"anyOf": [props.pop(name), {"type": "integer"}]}
    if "timestamp" in props:
        props["timestamp"] = {
            "anyOf": [
                {"type": "string", "description": "ISO 8601; a naive time is UTC"},
                {"type": "number", "minimum": _MIN_EPOCH_MS, "maximum": _MAX_EPOCH_MS},
            ]
        }
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

    event_id: str = Field(min_length=1, max_length=200)
    timestamp: datetime
    person_id: str = Field(min_length=1, max_length=200)
    door_id: str = Field(min_length=1, max_length=200)
    badge_id: str | None = Field(default=None, max_length=200)
    access_result: AccessResult
    badge_status: BadgeStatus | None = None
    door_held_open_time: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    entry_without_badge: bool = False
    device_status: str = Field(default="normal", max_length=100)
    facility_id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_defaults(cls, data: Any) -> Any:
        # Other systems send `null` for "not known"; treat it as the field's default.
        if isinstance(data, dict):
            for name in ("door_held_open_time", "entry_without_badge", "device_status"):
                if name in data and data[name] is None:
                    data = {k: v for k, v in data.items() if k != name}
        return data

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

    @field_validator("access_result", mode="before")
    @classmethod
    def _result_any_case(cls, value: object) -> object:
        if isinstance(value, str):
            member = _RESULTS.get(value.strip().lower())
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
            member = _BADGE_STATUSES.get(value.strip().lower())
            if member is None:
                raise ValueError(f"badge_status must be one of {', '.join(m.value for m in BadgeStatus)}")
            return member
        return value

    @field_validator("entry_without_badge", mode="before")
    @classmethod
    def _bool_words(cls, value: object) -> object:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in {"", "0", "false", "no", "n", "f"}:
                return False
            if word in {"1", "true", "yes", "y", "t"}:
                return True
        return value

    @property
    def extra(self) -> dict[str, Any]:
        """Fields the contract does not name, kept verbatim."""
        return dict(self.__pydantic_extra__ or {})

    def extra_json(self) -> str | None:
        extra = self.extra
        if not extra:
            return None
        return orjson.dumps(extra, default=str).decode()

    def to_wire(self) -> bytes:
        """The JSON message as it travels on Kafka: contract field names, ISO UTC timestamp."""
        return orjson.dumps(self.model_dump(mode="json"))


def derive_event_id(row: dict[str, Any]) -> str:
    """Deterministic id for an upload row without one: UUIDv5 of the row's canonical JSON.

    The same row uploaded twice gets the same id, so the idempotent sink stores it once.
    """
    canonical = orjson.dumps({k: row[k] for k in sorted(row)}, default=str, option=orjson.OPT_SORT_KEYS)
    return str(uuid.uuid5(UPLOAD_NAMESPACE, canonical.decode()))


def parse_event_bytes(raw: bytes, *, max_bytes: int = 64 * 1024) -> AccessEvent:
    """Parse one Kafka message; raises EventParseError with a short reason for the DLQ."""
    if len(raw) > max_bytes:
        raise EventParseError("oversized", f"message of {len(raw)} bytes exceeds {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventParseError("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventParseError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    try:
        return AccessEvent.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "event"
        kind = "missing_field" if first.get("type") == "missing" else "invalid_field"
        raise EventParseError(kind, f"{field}: {first.get('msg')}") from None


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
