"""`POST /api/v1/events`: validate every item, publish only a fully valid request, answer after the
broker acks, and say exactly which events were published when the broker fails part-way."""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from services.gateway.admission import BudgetExhausted, request_cost
from services.gateway.deps import IngestBudget, KafkaBreaker, Limiter, Publisher, Settings
from services.gateway.publisher import BrokerUnavailable, EventPublisher, Message, PublishIncomplete
from services.gateway.rate_limit import IngestLimiter, Quota
from services.gateway.settings import GatewaySettings
from shared.api_keys import PresentedApiKey, authenticate
from shared.breaker import CircuitBreaker, CircuitBreakerOpen
from shared.errors import ApiError, validation_details
from shared.event_fastpath import fast_wire
from shared.event_vocabulary import get_event_limits
from shared.events import AccessEvent

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
async def post_events(
    request: Request,
    publisher: Publisher,
    settings: Settings,
    limiter: Limiter,
    budget: IngestBudget,
    breaker: KafkaBreaker,
    _key: PresentedApiKey,
) -> JSONResponse:
    """Accept one access event or a JSON array of them; 202 only once Kafka acknowledged every one."""
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
            return await _ingest(request, publisher, settings, limiter, breaker, identity, quota)
    except BudgetExhausted:
        raise ApiError(
            503,
            "the gateway is busy with other ingest requests; retry shortly",
            code="ingest_busy",
            details={"retry_after": 1.0},
            headers={"Retry-After": "1"},
        ) from None


async def _ingest(
    request: Request,
    publisher: EventPublisher,
    settings: GatewaySettings,
    limiter: IngestLimiter,
    breaker: CircuitBreaker,
    identity: str,
    quota: Quota | None,
) -> JSONResponse:
    body = await read_body(request, settings.max_request_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
    del body  # the parsed objects replace it
    messages = parse_items(payload, settings.max_events_per_request, get_event_limits().max_event_bytes)
    del payload
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
    return JSONResponse({"accepted": accepted}, status_code=202, headers=quota.headers() if quota else None)
