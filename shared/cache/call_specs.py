"""The warmer's record of how a key was computed, stored in Redis or on disk as JSON.

A call spec is (cache name, positional arguments, keyword arguments). It is written as JSON
(pydantic's JSON form of models, dataclasses and datetimes) and read back by validating each
argument against the type hints of the function the name maps to, exactly as a request's
input would be: whatever Redis or the disk holds can at worst make the warmer call a cached
analysis with valid arguments, never run code or build arbitrary objects.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

__all__ = ["decode_call_spec", "encode_call_spec"]

log = logging.getLogger(__name__)

CallSpec = tuple[str, tuple[Any, ...], dict[str, Any]]


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    v: typing.Literal[1]
    name: str
    args: list[Any]
    kwargs: dict[str, Any]


def encode_call_spec(spec: CallSpec) -> bytes | None:
    """The JSON form, or None when an argument has none (that key is then not warmed)."""
    name, args, kwargs = spec
    try:
        return orjson.dumps(
            {
                "v": 1,
                "name": name,
                "args": to_jsonable_python(list(args)),
                "kwargs": to_jsonable_python(kwargs),
            }
        )
    except (PydanticSerializationError, TypeError) as exc:
        log.debug("call of %s not recorded for warming: %s", name, exc)
        return None


def _parameter_types(fn: Callable[..., Any]) -> tuple[list[Any], dict[str, Any]]:
    """The annotated type of each positional and keyword parameter (Any when unknown)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a hint naming something unresolvable: validate nothing, take JSON as is
        hints = {}
    signature = inspect.signature(fn)
    positional = [
        hints.get(p.name, Any)
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return positional, {name: hints.get(name, Any) for name in signature.parameters}


def decode_call_spec(
    raw: bytes | str, functions: dict[str, Callable[..., Any]]
) -> tuple[str, tuple[Any, ...], dict[str, Any]] | None:
    """The call to repeat, with validated arguments; None when the record is not usable."""
    try:
        stored = _Stored.model_validate(orjson.loads(raw))
        fn = functions.get(stored.name)
        if fn is None:
            return None
        positional, by_name = _parameter_types(fn)
        if len(stored.args) > len(positional) or set(stored.kwargs) - set(by_name):
            return None
        args = tuple(TypeAdapter(t).validate_python(a) for t, a in zip(positional, stored.args, strict=False))
        kwargs = {k: TypeAdapter(by_name[k]).validate_python(v) for k, v in stored.kwargs.items()}
    except (orjson.JSONDecodeError, ValidationError, TypeError, ValueError) as exc:
        log.warning("ignored a stored call spec: %s", exc)
        return None
    return stored.name, args, kwargs
