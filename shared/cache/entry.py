"""What every tier stores: the value and what the engine needs to judge it, and its wire form.

The shared tiers (Redis, disk) hold bytes that anyone with access to Redis or to the cache
directory can write, so they are decoded as data only, never as code: a versioned header in
JSON (orjson) with a type tag, then the value as JSON or, for DataFrames, as an Arrow IPC
stream. Bytes in any other form (a pickle left by an older version, or planted) are refused
with `EntryDecodeError`, which the tiers treat as a miss.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["CacheEntry", "EntryDecodeError", "EntryEncodeError", "dumps", "loads"]

MAGIC = b"SFC\x01"
_LENGTH = struct.Struct(">I")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _json_default(value: Any) -> Any:
    """What orjson leaves out: pandas timestamps (datetime subclasses) and numpy scalars."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__qualname__} has no JSON form")


class EntryEncodeError(TypeError):
    """The value has no safe wire form (JSON or Arrow); it stays in the process's own tier."""


class EntryDecodeError(ValueError):
    """The bytes are not a cache entry of this format: a miss, never code to run."""


@dataclass
class CacheEntry:
    """A cached value with its timing.

    `expires_at` ends freshness; until `stale_until` the entry is kept as the stale-if-error
    fallback. `started_at` is when the computation began (before its database snapshot):
    an invalidation recorded later than that makes the entry invalid. `delta` is how long
    the computation took (XFetch's δ). Times are wall-clock seconds, comparable across
    processes on one host.
    """

    value: Any
    name: str
    started_at: float
    delta: float
    expires_at: float
    stale_until: float
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def usable_stale(self, now: float) -> bool:
        return now < self.stale_until


class _Header(BaseModel):
    """The decoded header, validated field by field (the bytes come from outside the process)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["json", "arrow.dataframe"]
    name: str
    started_at: float
    delta: float
    expires_at: float
    stale_until: float
    tags: list[str]
    extra: dict[str, Any]
    value: Any = None


def _frame_to_ipc(frame: pd.DataFrame) -> bytes:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=True)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise EntryEncodeError(f"DataFrame has no Arrow form: {exc}") from None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _frame_from_ipc(payload: bytes) -> pd.DataFrame:
    try:
        with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
            table = reader.read_all()
        # The pandas metadata in the schema only names columns, index and dtypes.
        frame: pd.DataFrame = table.to_pandas()
        return frame
    except (pa.ArrowException, ValueError, TypeError, KeyError) as exc:
        raise EntryDecodeError(f"not an Arrow IPC stream: {exc}") from None


def dumps(entry: CacheEntry) -> bytes:
    header: dict[str, Any] = {
        "name": entry.name,
        "started_at": entry.started_at,
        "delta": entry.delta,
        "expires_at": entry.expires_at,
        "stale_until": entry.stale_until,
        "tags": list(entry.tags),
        "extra": entry.extra,
    }
    payload = b""
    if isinstance(entry.value, pd.DataFrame):
        header["kind"] = "arrow.dataframe"
        payload = _frame_to_ipc(entry.value)
    else:
        header["kind"] = "json"
        header["value"] = entry.value
    try:
        encoded = orjson.dumps(header, default=_json_default, option=_JSON_OPTIONS)
    except TypeError as exc:
        raise EntryEncodeError(f"{entry.name}: the value has no JSON form: {exc}") from None
    return MAGIC + _LENGTH.pack(len(encoded)) + encoded + payload


def loads(data: bytes) -> CacheEntry:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EntryDecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LENGTH.size:
        raise EntryDecodeError("not a cache entry of this format")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if start + length > len(data):
        raise EntryDecodeError("truncated cache entry")
    try:
        header = _Header.model_validate(orjson.loads(data[start : start + length]))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise EntryDecodeError(f"invalid cache entry header: {exc}") from None
    payload = data[start + length :]
    if header.kind == "arrow.dataframe":
        value: Any = _frame_from_ipc(payload)
    elif payload:
        raise EntryDecodeError("unexpected bytes after a JSON entry")
    else:
        value = header.value
    return CacheEntry(
        value=value,
        name=header.name,
        started_at=header.started_at,
        delta=header.delta,
        expires_at=header.expires_at,
        stale_until=header.stale_until,
        tags=tuple(header.tags),
        extra=header.extra,
    )
