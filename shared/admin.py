"""Bearer-token guard for `/admin/*` and other writes that change the fleet.

With no ADMIN_TOKEN configured every call is refused (403): an unset token must never mean
"open".
"""

from __future__ import annotations

import hmac
from typing import Annotated, Self

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, model_validator

from shared.errors import ApiError
from shared.settings import FleetSettings

_bearer = HTTPBearer(auto_error=False)


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
    and an empty body are refused (422) rather than silently changing nothing."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(f"give at least one of {', '.join(type(self).model_fields)}")
        return self
