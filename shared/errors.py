"""The fleet's JSON error envelope: `{"error": {"code", "message", "details"}}` for every failure.

Routes raise :class:`ApiError`; FastAPI's validation and routing errors are mapped by the
handlers of :func:`install_error_handlers`; anything else that escapes a handler or a
middleware becomes a 500 envelope in :class:`ErrorEnvelopeMiddleware`, which sits inside the
request-id and HTTP-metrics middlewares so that even a crash is answered with an id and counted.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable code, e.g. `validation_error`, `not_found`")
    message: str = Field(description="what is wrong and where, for a person")
    details: Any = Field(None, description="structured context: failing fields, limits, retry hints")


class ErrorEnvelope(BaseModel):
    """The body of every 4xx and 5xx answer of the fleet."""

    error: ErrorInfo


class ApiError(Exception):
    """Raise from any route to answer with the envelope and the given status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code or _CODES_BY_STATUS.get(status_code, "error")
        self.message = message
        self.details = details
        self.headers = headers

    def response(self) -> JSONResponse:
        """The envelope this error answers with: the one place outside the app's exception
        handler (pure ASGI middlewares and dispatchers) turns an ApiError into an answer."""
        return error_response(
            self.status_code, self.message, code=self.code, details=self.details, headers=self.headers
        )


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code or _CODES_BY_STATUS.get(status_code, "error"), message, details),
        status_code=status_code,
        headers=headers,
    )


def _describe_location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors reduced to where and what, without echoing large inputs back."""
    out = []
    for err in errors:
        loc = err.get("loc", ())
        out.append(
            {"loc": _describe_location(loc), "message": err.get("msg", "invalid"), "type": err.get("type")}
        )
    return out


_PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts at this path (RFC 9110: the `Allow` of a 405).

    Starlette's 405 names the methods of the first route that matched the path only; a path
    served by several routes (`GET` and `PUT /admin/tuning`) needs them all.
    """
    routes = request.app.router.routes
    allowed = []
    for method in _PROBED_METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(list(exc.errors()))
        where = ", ".join(f"{d['loc']}: {d['message']}" for d in details[:5])
        return error_response(422, f"invalid request: {where}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (
            exc.detail if isinstance(exc.detail, str) else _CODES_BY_STATUS.get(exc.status_code, "error")
        )
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        return error_response(exc.status_code, message, headers=headers or None)


_INTERNAL_ERROR = JSONResponse(
    error_body("internal_error", "internal error; the incident was logged"), status_code=500
)


class ErrorEnvelopeMiddleware:
    """Any exception that escapes the app below becomes a 500 envelope (never a plain-text page).

    Starlette's own last-resort handler sits outside every user middleware, so its answer would
    carry no `X-Request-ID` and be missed by the HTTP metrics; this one is placed inside them.
    When the answer had already started (a stream that broke off) nothing can be resent and the
    exception propagates so that the server closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _INTERNAL_ERROR(scope, receive, send)
