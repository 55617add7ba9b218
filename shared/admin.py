"""The admin API every tunable service shares: the bearer-token guard and the `/admin/tuning` shape.

With no ADMIN_TOKEN configured every call is refused (403): an unset token must never mean
"open".

`/admin/tuning` has one shape everywhere (analytics, the event processor, the replicator):
`GET` answers the live value of each knob at the top level, plus `defaults` (the configured
values) and `bounds` (`{"min", "max"}` per knob); `PUT` takes any subset of the knobs. Each
knob's bounds are declared once, as a :class:`Knob`, and used both to validate the update and
to report the bounds.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any, Self

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import ApiError
from shared.settings import FleetSettings

_bearer = HTTPBearer(
    scheme_name="AdminToken",
    description="`Authorization: Bearer <ADMIN_TOKEN>`; with ADMIN_TOKEN unset every admin call is refused",
    auto_error=False,
)


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    settings: FleetSettings = request.app.state.settings
    if settings.admin_token is None:
        raise ApiError(403, "the admin API is disabled: ADMIN_TOKEN is not set", code="admin_disabled")
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401, "missing bearer token", code="unauthorized", headers={"WWW-Authenticate": "Bearer"}
        )
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise ApiError(403, "invalid admin token", code="forbidden")


AdminOnly = Annotated[None, Depends(require_admin)]


class PartialUpdate(BaseModel):
    """Body of a `PUT /admin/tuning`: fields left out keep their current value; unknown fields
    and an empty body are refused (422) rather than silently changing nothing. Strict: `"5"` or
    `true` is not a number (a typo must not retune a running service)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(f"give at least one of {', '.join(type(self).model_fields)}")
        return self


class Bounds(BaseModel):
    min: int | float
    max: int | float


@dataclass(frozen=True)
class Knob:
    """One tunable setting: its inclusive bounds and what it does, declared once."""

    low: int | float
    high: int | float
    description: str

    def update_field(self) -> Any:
        """The field of a :class:`PartialUpdate`: optional, bounded."""
        return Field(None, ge=self.low, le=self.high, description=self.description)

    def value_field(self) -> Any:
        """A bounded value without a default (e.g. the values of a map of knobs)."""
        return Field(ge=self.low, le=self.high, description=self.description)

    @property
    def bounds(self) -> Bounds:
        return Bounds(min=self.low, max=self.high)


def bounds_of(knobs: dict[str, Knob]) -> dict[str, Bounds]:
    return {name: knob.bounds for name, knob in knobs.items()}


class TuningView(BaseModel):
    """The answer of `GET` and `PUT /admin/tuning`; each service adds its knobs as fields."""

    defaults: dict[str, int | float | dict[str, int | float]] = Field(
        description="the configured values: where the optimizer returns to, and its ceiling"
    )
    bounds: dict[str, Bounds] = Field(description="inclusive bounds of each knob")
