"""`POST /api/v1/events`: validate every item, publish only a fully valid request, answer after the
broker acks, and say exactly which events were published when the broker fails part-way.

The route is the gateway's hot path, so it has two ways in that give the same answers:
:class:`IngestDispatch` (the innermost middleware) answers `POST /api/v1/events` itself, and the
declared FastAPI route below documents it (OpenAPI) and answers when the dispatcher is not
installed. Both call :func:`accept_events`. The dispatcher saves what FastAPI's router costs per
request (matching every route, solving the route's dependencies, its exception middleware and
exit stacks): about a tenth of the gateway's CPU per ingest request, sampled under load.

A body is read in one of two ways, with the same verdicts (proven by property tests):
:func:`fast_messages` decodes it with msgspec straight into the fields of the usual event shape
and writes each Kafka message from those fields; anything that way is not sure of (another
shape, an invalid item, an oversized message, broken JSON) goes to :func:`general_messages`,
which parses with orjson, judges item by item and gives every refusal its reason.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import msgspec
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.admission import BudgetExhausted, MemoryBudget, request_cost
from services.gateway.publisher import BrokerUnavailable, EventPublisher, Message, PublishIncomplete
from services.gateway.rate_limit import IngestLimiter, Quota
from services.gateway.settings import GatewaySettings
from shared.api_keys import PresentedApiKey, authenticate
from shared.breaker import CircuitBreaker, CircuitBreakerOpen
from shared.errors import ApiError, validation_details

# `_Message` is the fast path's own decoding shape (the JSON types of a well-behaved event, no
# other field): the gateway decodes whole request bodies into it, as the processor decodes
# single messages, so both paths share the shape the fast path's tests prove.
from shared.event_fastpath import EventRow, _Message, fast_row, fast_wire
from shared.event_vocabulary import get_event_limits, time_window
from shared.events import AccessEvent

# The wire message's field names, in the model's (and the row's) order.
_WIRE_FIELDS = tuple(AccessEvent.model_fields)

router = APIRouter(prefix="/api/v1", tags=["events"])


def _item_error(index: int, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ValidationError):
        details = validation_details(list(exc.errors()))
        reason = "; ".join(f"{d['loc']}: {d['message']}" for d in details)
        return {"index": index, "reason": reason, "fields": details}
    # Nothing one item holds may become a 500: whatever else the model raised is its reason.
    return {"index": index, "reason": f"{type(exc).__name__}: {exc}"}


def parse_items(payload: Any, max_items: int, max_event_bytes: int) -> list[Message]:
    """The Kafka message of every item, or ApiError: 422 listing each invalid item, 413 listing
    each item whose message would exceed `max_event_bytes` (what the processor accepts)."""
    items: list[Any] = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ApiError(422, "the request holds no events", code="empty_batch")
    if len(items) > max_items:
        raise ApiError(
            413,
            f"{len(items)} events in one request; the maximum is {max_items}",
            details={"max_events_per_request": max_items},
        )
    messages: list[Message] = []
    errors: list[dict[str, Any]] = []
    oversized: list[dict[str, Any]] = []
    for index in range(len(items)):
        # Each item's objects are released once its message is built, so the request's memory
        # shrinks from the parsed JSON towards the messages as it goes.
        item, items[index] = items[index], None
        if not isinstance(item, dict):
            errors.append({"index": index, "reason": f"expected a JSON object, got {type(item).__name__}"})
            continue
        # The fast path writes what the model would for the usual message (proven byte for byte
        # by property tests); the model judges the rest and gives each refusal its reason.
        wire = fast_wire(item)
        if wire is not None:
            door_id: str = item["door_id"]  # the fast path takes door ids only as they are stored
        else:
            try:
                event = AccessEvent.model_validate(item)
                wire = event.to_wire()
            except Exception as exc:
                errors.append(_item_error(index, exc))
                continue
            door_id = event.door_id
        if len(wire) > max_event_bytes:
            oversized.append({"index": index, "bytes": len(wire), "max_event_bytes": max_event_bytes})
            continue
        # `to_wire` returns a bytes object of exactly the message's size (orjson's output would
        # keep the capacity it grew to, up to ~50x for nested extras), so it is held as it is.
        messages.append(Message(key=door_id.encode(), value=wire))
    if errors:
        raise ApiError(
            422,
            f"{len(errors)} of {len(items)} events are invalid; none were accepted",
            code="invalid_events",
            details=errors + [{**o, "reason": "oversized"} for o in oversized],
        )
    if oversized:
        first = oversized[0]
        raise ApiError(
            413,
            f"{len(oversized)} of {len(items)} events exceed {max_event_bytes} bytes each (the first, "
            f"at index {first['index']}, has {first['bytes']}); none were accepted",
            code="event_too_large",
            details=oversized,
        )
    return messages


# One event or an array of them, in the fast path's shape. msgspec refuses any other shape (an
# extra field, a wrong JSON type, malformed JSON or UTF-8, deep nesting) at the first byte that
# breaks it; a refusal decides nothing, the general path then judges the body.
_decode_body = msgspec.json.Decoder(list[_Message] | _Message).decode


class _Wire(msgspec.Struct, gc=False):
    """The wire message of an event without extra fields: the model's fields in its order.

    msgspec writes it as orjson (and so pydantic, see `fast_wire`) writes the same dict (the
    same string escapes, RFC 3339 UTC times with `Z` and microseconds when there are any, the
    same shortest float digits), except that it writes an exponent without `+`: `1e16`, not
    `1e+16`. Floats from 1e16 up are therefore written by orjson (`_wire`). Not tracked by the
    garbage collector: it holds only text, numbers and a datetime, and lives for one call."""

    event_id: str
    timestamp: datetime
    person_id: str
    door_id: str
    badge_id: str | None
    access_result: str
    badge_status: str | None
    door_held_open_time: float
    entry_without_badge: bool
    device_status: str
    facility_id: str | None


_encode_wire = msgspec.json.Encoder().encode
_EXPONENT_PLUS = 1e16  # where shortest float reprs turn to exponents, `1e+16` in orjson


def _wire(row: EventRow) -> bytes:
    """`AccessEvent.to_wire()` of the fast path's row of an event without extra fields."""
    if row[7] < _EXPONENT_PLUS:
        return _encode_wire(_Wire(*row[:11]))
    return orjson.dumps(dict(zip(_WIRE_FIELDS, row[:11], strict=True)), option=orjson.OPT_UTC_Z)


def fast_messages(body: bytes | bytearray, max_items: int, max_event_bytes: int) -> list[Message] | None:
    """The Kafka messages of a body whose every event the fast path accepts, written as
    `AccessEvent.to_wire` writes them; None when any is not sure (the general path decides).

    The fields are read by msgspec into the fast path's shape (no dict per event), and each
    message is written from the fast path's row (property tests prove both against the model)."""
    try:
        decoded = _decode_body(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    items = decoded if isinstance(decoded, list) else [decoded]
    if not 0 < len(items) <= max_items:
        return None
    window = time_window()  # once per request: the clock read is a tenth of the fast path's cost
    messages: list[Message] = []
    for item in items:
        row = fast_row(item, window)
        if row is None:
            return None
        wire = _wire(row)
        if len(wire) > max_event_bytes:
            return None  # the general path names it with its index
        messages.append(Message(row[3].encode(), wire))
    return messages


def general_messages(body: bytes | bytearray, max_items: int, max_event_bytes: int) -> list[Message]:
    """The messages of any body, or ApiError: 400 for broken JSON, then as `parse_items`."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
    return parse_items(payload, max_items, max_event_bytes)


def messages_of(body: bytes | bytearray, max_items: int, max_event_bytes: int) -> list[Message]:
    """The request's Kafka messages (or its ApiError): the fast path's when it is sure of every
    event, otherwise the general path's; either way the answer `general_messages` gives."""
    fast = fast_messages(body, max_items, max_event_bytes)
    if fast is not None:
        return fast
    return general_messages(body, max_items, max_event_bytes)


def _ranges(indices: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 7, 8] -> [[0, 2], [5, 5], [7, 8]]: inclusive runs, short even for 10,000 items."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return runs


def _incomplete(exc: PublishIncomplete, total: int, retry_after: float) -> ApiError:
    outcome = exc.outcome
    published = len(outcome.acknowledged)
    message = (
        f"{published} of {total} events were published; "
        + (f"{len(outcome.unknown)} may or may not have been; " if outcome.unknown else "")
        + "sending the whole request again is safe (events are stored once per event_id)"
    )
    retry = str(max(1, math.ceil(retry_after)))
    broker_fault = isinstance(exc, BrokerUnavailable)
    return ApiError(
        503 if broker_fault else 422,
        ("the broker is unavailable: " if broker_fault else "the broker refused some events: ") + message,
        code="broker_unavailable" if broker_fault else "events_refused_by_broker",
        details={
            "published": _ranges(outcome.acknowledged),
            "not_published": _ranges(outcome.refused),
            "unknown": _ranges(outcome.unknown),
            **({"retry_after": float(retry)} if broker_fault else {}),
        },
        headers={"Retry-After": retry} if broker_fault else None,
    )


def client_identity(request: Request, settings: GatewaySettings) -> str:
    """The API key's fingerprint when keys are required (401/403 otherwise), else the client
    address (for rate limits)."""
    authenticated = authenticate(settings, request.headers.get("x-api-key"))
    if authenticated is not None:
        return authenticated
    # Without API_KEYS a client-chosen header must not pick its own bucket.
    return "ip:" + (request.client.host if request.client else "unknown")


def declared_length(request: Request, limit: int) -> int | None:
    """The Content-Length, after refusing one over `limit` (413) before anything is read."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise ApiError(
            413,
            f"body of {declared} bytes exceeds the limit of {limit} bytes",
            details={"max_request_bytes": limit},
        )
    return int(declared)


async def read_body(request: Request, limit: int) -> bytearray:
    """The body in one buffer (no list of chunks joined into a second copy), at most `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise ApiError(
                413, f"body exceeds the limit of {limit} bytes", details={"max_request_bytes": limit}
            )
        body += chunk
    return body


# Declared for the OpenAPI document only: the body is read and validated item by item below, so
# that one bad event is reported with its index instead of failing the whole parse.
EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TypeAdapter(AccessEvent | list[AccessEvent]).json_schema()}
        },
    }
}


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events acknowledged by Kafka")


async def accept_events(request: Request) -> Response:
    """Accept one access event or a JSON array of them; 202 only once Kafka acknowledged every
    one. Raises ApiError for every refusal. What it needs is what the app's lifespan built."""
    state = request.app.state
    settings: GatewaySettings = state.settings
    limiter: IngestLimiter = state.ingest_limiter
    budget: MemoryBudget = state.ingest_budget
    identity = client_identity(request, settings)
    quota: Quota | None = None
    if limiter.enabled:
        quota = await limiter.hit_request(identity)
    length = declared_length(request, settings.max_request_bytes)
    try:
        async with budget.reserve(
            request_cost(settings.max_request_bytes if length is None else length),
            settings.ingest_admission_timeout_s,
        ):
            return await _ingest(
                request, state.publisher, settings, limiter, state.kafka_breaker, identity, quota
            )
    except BudgetExhausted:
        raise ApiError(
            503,
            "the gateway is busy with other ingest requests; retry shortly",
            code="ingest_busy",
            details={"retry_after": 1.0},
            headers={"Retry-After": "1"},
        ) from None


@router.post(
    "/events",
    status_code=202,
    openapi_extra=EVENTS_BODY,
    response_model=EventsAccepted,
    responses={
        401: {"description": "API keys are configured and X-API-Key is missing"},
        403: {"description": "API keys are configured and X-API-Key is not one of them"},
        413: {
            "description": "too many events, too large a body, or events over MAX_EVENT_BYTES (with index)"
        },
        422: {"description": "invalid events, with index and reason of each; nothing published"},
        429: {"description": "rate limit exceeded; retry after Retry-After seconds"},
        503: {
            "description": "Kafka unavailable; `details` says which indices were published; "
            "resending the whole request is safe"
        },
    },
)
async def post_events(request: Request, _key: PresentedApiKey) -> Response:
    """Accept one access event or a JSON array of them; 202 only once Kafka acknowledged every one."""
    # `_key` declares the X-API-Key scheme in OpenAPI; the key is checked in `accept_events`
    # (first the key, then the rate limit, then the body), as `IngestDispatch` does.
    return await accept_events(request)


async def _ingest(
    request: Request,
    publisher: EventPublisher,
    settings: GatewaySettings,
    limiter: IngestLimiter,
    breaker: CircuitBreaker,
    identity: str,
    quota: Quota | None,
) -> Response:
    body = await read_body(request, settings.max_request_bytes)
    messages = messages_of(body, settings.max_events_per_request, get_event_limits().max_event_bytes)
    del body  # the messages replace it
    if limiter.enabled:
        quota = await limiter.hit_events(identity, len(messages)) or quota
    try:
        accepted = await breaker.call(publisher.publish, messages)
    except CircuitBreakerOpen as exc:
        retry = str(max(1, math.ceil(exc.retry_after)))
        raise ApiError(
            503,
            f"the broker is unavailable (circuit breaker {exc.name!r} is {exc.state}); nothing was published",
            code="broker_unavailable",
            details={"retry_after": float(retry), "published": [], "breaker": exc.name},
            headers={"Retry-After": retry},
        ) from None
    except PublishIncomplete as exc:
        raise _incomplete(exc, len(messages), breaker.retry_after or 1.0) from None
    # The bytes JSONResponse would write, without its encoder round trip.
    return Response(
        b'{"accepted":%d}' % accepted,
        status_code=202,
        media_type="application/json",
        headers=quota.headers() if quota else None,
    )


class IngestDispatch:
    """Inner middleware: `POST /api/v1/events` answered by `accept_events` without the router.

    Pure ASGI, as the proxy's `ProxyDispatch`: FastAPI's router would try the app's routes in
    turn, then solve the route's dependencies and wrap it in its exception middleware, per
    request. Here the request is recognised by its method and exact path, the declared route is
    put in the scope as the router would (the HTTP metrics, the operation timing and the tracing
    name it by it), and an ApiError becomes the error envelope as the app's handler makes it.
    Anything else, including any other exception (answered 500 by the envelope middleware
    outside), goes where it would have gone. Until the lifespan has built the publisher, the
    router answers."""

    PATH = "/api/v1/events"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route: BaseRoute | None = None

    def _declared_route(self, application: Any) -> BaseRoute | None:
        if self._route is None:
            for route in application.router.routes:
                methods = getattr(route, "methods", None) or ()
                if getattr(route, "path", None) == self.PATH and "POST" in methods:
                    self._route = route
                    break
        return self._route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        application = scope.get("app")
        state = getattr(application, "state", None)
        route = self._declared_route(application) if state is not None else None
        if route is None or getattr(state, "publisher", None) is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = getattr(route, "endpoint", post_events)
        scope["path_params"] = {}
        request = Request(scope, receive)
        try:
            response = await accept_events(request)
        except ApiError as exc:
            response = exc.response()
        await response(scope, receive, send)
