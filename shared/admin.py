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
import re
from dataclasses import dataclass
from typing import Annotated, Any, Self

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ApiError
from shared.settings import FleetSettings

_bearer = HTTPBearer(
    scheme_name="AdminToken",
    description="`Authorization: Bearer <ADMIN_TOKEN>`; with ADMIN_TOKEN unset every admin call is refused",
    auto_error=False,
)


def check_admin(settings: FleetSettings, authorization: str | None) -> None:
    """Raise the fleet's 403/401 unless `authorization` is `Bearer <ADMIN_TOKEN>`."""
    if settings.admin_token is None:
        raise ApiError(403, "the admin API is disabled: ADMIN_TOKEN is not set", code="admin_disabled")
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "missing bearer token", code="unauthorized", headers={"WWW-Authenticate": "Bearer"}
        )
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(403, "invalid admin token", code="forbidden")


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    # `credentials` only documents the scheme in OpenAPI; the header is checked as sent.
    del credentials
    check_admin(request.app.state.settings, request.headers.get("authorization"))


def _needs_admin(dependant: Dependant) -> bool:
    return any(d.call is require_admin or _needs_admin(d) for d in dependant.dependencies)


class AdminFirstMiddleware:
    """Check the admin token before an admin route reads its body.

    FastAPI reads and decodes a route's JSON body before it runs the route's dependencies, so a
    caller without a token sending bad JSON would learn 422 (and make the service parse up to a
    whole body) instead of 401. This pure ASGI middleware knows the write routes that depend on
    `require_admin` (found once, from the app's route table) and answers 401/403 for them
    first. Reads carry no body and pass straight through.
    """

    _BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._guarded: list[tuple[frozenset[str], re.Pattern[str]]] | None = None
        self._routes_seen = -1

    def _admin_routes(self, application: Any) -> list[tuple[frozenset[str], re.Pattern[str]]]:
        routes = application.router.routes
        if self._guarded is None or self._routes_seen != len(routes):
            guarded = []
            for context in iter_route_contexts(routes):
                dependant = getattr(context, "dependant", None)
                if isinstance(dependant, Dependant) and _needs_admin(dependant):
                    guarded.append((frozenset(context.methods or ()), context.path_regex))
            self._guarded, self._routes_seen = guarded, len(routes)
        return self._guarded

    def _is_admin_route(self, scope: Scope) -> bool:
        application = scope.get("app")
        if application is None:
            return False
        path, method = scope["path"], scope["method"]
        return any(
            method in methods and regex.match(path) for methods, regex in self._admin_routes(application)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in self._BODYLESS and self._is_admin_route(scope):
            settings: FleetSettings = scope["app"].state.settings
            authorization = next(
                (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None
            )
            try:
                check_admin(settings, authorization)
            except ApiError as exc:
                response = exc.response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
