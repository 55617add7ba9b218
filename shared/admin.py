"""Bearer-token guard for `/admin/*` and other writes that change the fleet.

With no ADMIN_TOKEN configured every call is refused (403): an unset token must never mean
"open".
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
