"""Deterministic cache keys: the same call gives the same key in every process, on every run.

A key is `<cache name>:<sha256 of the canonical arguments>`. Canonical means: dicts and sets
ordered, pydantic models and dataclasses by their fields, datetimes in UTC ISO form,
DataFrames and arrays by content (not by identity or a truncated repr, which is how keys
collided in the original design). An argument with no canonical form is refused with a
TypeError rather than keyed by something unstable such as `repr()` with a memory address.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel

__all__ = ["canonical", "make_key"]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(value: Any) -> Any:
    """A JSON-serialisable structure that is equal for equal arguments, tagged by type."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return ["float", "nan"]
        return ["float", repr(value)]
    if isinstance(value, enum.Enum):
        return ["enum", type(value).__qualname__, canonical(value.value)]
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return ["datetime", value.astimezone(UTC).isoformat()]
        return ["naive-datetime", value.isoformat()]
    if isinstance(value, date | time):
        return [type(value).__name__, value.isoformat()]
    if isinstance(value, timedelta):
        return ["timedelta", value.total_seconds()]
    if isinstance(value, Decimal | uuid.UUID | PurePath):
        return [type(value).__name__, str(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", _digest(bytes(value))]
    if isinstance(value, BaseModel):
        return ["model", type(value).__qualname__, canonical(value.model_dump(mode="python"))]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dataclass", type(value).__qualname__, canonical(fields)]
    if isinstance(value, pd.DataFrame):
        content = pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes()
        return [
            "DataFrame",
            [str(c) for c in value.columns],
            [str(t) for t in value.dtypes],
            _digest(content),
        ]
    if isinstance(value, pd.Series):
        content = pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes()
        return ["Series", str(value.name), str(value.dtype), _digest(content)]
    if isinstance(value, np.ndarray):
        return [
            "ndarray",
            str(value.dtype),
            list(value.shape),
            _digest(np.ascontiguousarray(value).tobytes()),
        ]
    if isinstance(value, np.generic):
        return canonical(value.item())
    if isinstance(value, Mapping):
        items = [[canonical(k), canonical(v)] for k, v in value.items()]
        return ["map", sorted(items, key=lambda kv: orjson.dumps(kv[0]))]
    if isinstance(value, set | frozenset):
        return ["set", sorted((canonical(v) for v in value), key=orjson.dumps)]
    if isinstance(value, list | tuple):
        return [type(value).__name__, [canonical(v) for v in value]]
    raise TypeError(
        f"cannot build a stable cache key from {type(value).__qualname__}; pass plain values, "
        "pydantic models, dataclasses or DataFrames, or exclude the argument from the key"
    )


def make_key(name: str, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None) -> str:
    payload = orjson.dumps([canonical(list(args)), canonical(dict(kwargs or {}))])
    return f"{name}:{_digest(payload)[:40]}"
