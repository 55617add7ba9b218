"""Circuit-breaker settings and the YAML file they come from (`config/circuit-breakers.yaml`).

Names follow resilience4j, so operators who know it can read the file at a glance; the
simple form of the original fleet (`failure_threshold` consecutive failures, `recovery_timeout`
seconds) is accepted too. Every named breaker inherits the `defaults` section key by key.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class BreakerConfigError(ValueError):
    """The breaker file cannot be used; the message names the file and the key."""


def _parse_duration(value: object) -> object:
    """Seconds as a number, or a string such as `500ms`, `30s`, `2m`."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (use seconds, or e.g. '500ms', '30s', '2m')")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration)]


def resolve_exception(dotted: str) -> type[BaseException]:
    """`package.module.ClassName` → the exception class, or ValueError saying why not."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"{dotted!r} is not a dotted name such as 'asyncpg.exceptions.QueryCanceledError'")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ValueError(f"{dotted!r} cannot be imported") from None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(f"{dotted!r} is not an exception class")
    return found


class BreakerConfig(BaseModel):
    """The effective settings of one breaker (after `defaults` were applied)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sliding_window_type: Literal["count_based", "time_based"] = "count_based"
    sliding_window_size: int = Field(100, ge=1, le=100_000, description="calls, or seconds when time_based")
    minimum_number_of_calls: int = Field(10, ge=1, description="calls in the window before rates count")
    failure_rate_threshold: float = Field(50.0, gt=0, le=100, description="percent")
    slow_call_rate_threshold: float = Field(100.0, gt=0, le=100, description="percent")
    slow_call_duration_threshold: Seconds = Field(5.0, gt=0)
    wait_duration_in_open_state: Seconds = Field(30.0, gt=0)
    permitted_calls_in_half_open_state: int = Field(3, ge=1, le=10_000)
    max_wait_duration_in_half_open_state: Seconds = Field(
        0.0, ge=0, description="0: stay half-open until every trial call has finished"
    )
    failure_threshold: int | None = Field(
        None, ge=1, description="consecutive failures that open (simple form)"
    )
    call_timeout: Seconds | None = Field(None, gt=0, description="when set, calls slower than this fail")
    record_timeouts: bool = True
    record_connection_errors: bool = True
    record_server_errors: bool = True
    record_other_exceptions: bool = Field(
        False, description="count exceptions of no known kind (not timeout/connection/status) as failures"
    )
    record_exceptions: tuple[str, ...] = ()
    ignore_exceptions: tuple[str, ...] = ()

    @field_validator("record_exceptions", "ignore_exceptions")
    @classmethod
    def _importable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            resolve_exception(name)
        return names

    @property
    def effective_minimum_calls(self) -> int:
        # As in resilience4j: a count window smaller than the minimum would never evaluate.
        if self.sliding_window_type == "count_based":
            return min(self.minimum_number_of_calls, self.sliding_window_size)
        return self.minimum_number_of_calls


def _normalise(section: dict[str, Any], where: str) -> dict[str, Any]:
    """The simple form's `recovery_timeout` is `wait_duration_in_open_state` under another name."""
    section = dict(section)
    if "recovery_timeout" in section:
        if "wait_duration_in_open_state" in section:
            raise BreakerConfigError(
                f"{where}: give either recovery_timeout or wait_duration_in_open_state, not both"
            )
        section["wait_duration_in_open_state"] = section.pop("recovery_timeout")
    return section


def _describe(exc: ValidationError, source: str, section: str) -> BreakerConfigError:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (section, *err["loc"]))
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        problems.append(f"{source}: {key}: {err['msg']}{shown}")
    return BreakerConfigError("; ".join(problems))


def build_config(
    defaults: dict[str, Any], overrides: dict[str, Any], *, source: str, section: str
) -> BreakerConfig:
    try:
        return BreakerConfig.model_validate({**defaults, **_normalise(overrides, f"{source}: {section}")})
    except ValidationError as exc:
        raise _describe(exc, source, section) from None


def parse_breaker_document(document: object, source: str) -> tuple[dict[str, Any], dict[str, BreakerConfig]]:
    """Validate a loaded YAML document: returns the raw defaults and every named breaker's config."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise BreakerConfigError(f"{source}: expected a mapping with 'defaults' and 'breakers'")
    unknown = set(document) - {"defaults", "breakers", "circuit_breakers"}
    if unknown:
        raise BreakerConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; expected 'defaults' and 'breakers'"
        )
    defaults_raw = document.get("defaults") or {}
    if not isinstance(defaults_raw, dict):
        raise BreakerConfigError(f"{source}: defaults: expected a mapping of settings")
    defaults = _normalise(defaults_raw, f"{source}: defaults")
    build_config(defaults, {}, source=source, section="defaults")
    named_raw = document.get("breakers", document.get("circuit_breakers")) or {}
    if not isinstance(named_raw, dict):
        raise BreakerConfigError(f"{source}: breakers: expected a mapping of breaker name → settings")
    named: dict[str, BreakerConfig] = {}
    for name, overrides in named_raw.items():
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise BreakerConfigError(f"{source}: breakers.{name}: expected a mapping of settings")
        named[str(name)] = build_config(defaults, overrides, source=source, section=f"breakers.{name}")
    return defaults, named


def load_breaker_file(path: Path) -> tuple[dict[str, Any], dict[str, BreakerConfig]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BreakerConfigError(f"{path}: cannot read the circuit-breaker file ({exc.strerror})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BreakerConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_breaker_document(document, str(path))
