"""`POST /api/v1/events`: validate every item, publish all or none, answer after the broker acks."""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from services.gateway.deps import KafkaBreaker, Limiter, Publisher, Settings
from services.gateway.rate_limit import Quota
from services.gateway.settings import GatewaySettings
from shared.api_key import PresentedApiKey
from shared.breaker import CircuitBreakerOpen
from shared.errors import ApiError, validation_details
from shared.events import AccessEvent

router = APIRouter(prefix="/api/v1", tags=["events"])


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


def parse_items(payload: Any, max_items: int) -> list[AccessEvent]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ApiError(422, "the request holds no events", code="empty_batch")
    if len(items) > max_items:
        raise ApiError(
            413,
            f"{len(items)} events in one request; the maximum is {max_items}",
            details={"max_events_per_request": max_items},
        )
    events: list[AccessEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"index": index, "reason": f"expected a JSON object, got {type(item).__name__}"})
            continue
        try:
            events.append(AccessEvent.model_validate(item))
        except ValidationError as exc:
            details = validation_details(list(exc.errors()))
            errors.append(
                {
                    "index": index,
                    "reason": "; ".join(f"{d['loc']}: {d['message']}" for d in details),
                    "fields": details,
                }
            )
    if errors:
        raise ApiError(
            422,
            f"{len(errors)} of {len(items)} events are invalid; none were accepted",
            code="invalid_events",
            details=errors,
        )
    return events


def client_identity(request: Request, settings: GatewaySettings) -> str:
    """The API key's fingerprint when keys are required, else the client address (for rate limits)."""
    keys = settings.api_key_set
    if not keys:
        presented = request.headers.get("x-api-key")
        if presented:
            return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:16]
        return "ip:" + (request.client.host if request.client else "unknown")
    presented = request.headers.get("x-api-key")
    if not presented:
        raise ApiError(
            401,
            "this gateway requires an API key in the X-API-Key header",
            code="missing_api_key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    # Compare against every key so the time taken does not reveal which one nearly matched.
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(presented.encode(), key.encode())
    if not valid:
        raise ApiError(
            401, "the X-API-Key is not valid", code="invalid_api_key", headers={"WWW-Authenticate": "ApiKey"}
        )
    return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:16]


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            f"body of {declared} bytes exceeds the limit of {limit} bytes",
            details={"max_request_bytes": limit},
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, f"body exceeds the limit of {limit} bytes", details={"max_request_bytes": limit}
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/events",
    status_code=202,
    openapi_extra=EVENTS_BODY,
    response_model=EventsAccepted,
    responses={
        401: {"description": "API keys are configured and X-API-Key is missing or wrong"},
        413: {"description": "too many events or too large a body"},
        422: {"description": "invalid events, with index and reason of each"},
        429: {"description": "rate limit exceeded; retry after Retry-After seconds"},
        503: {"description": "Kafka unavailable; retry after Retry-After seconds"},
    },
)
async def post_events(
    request: Request,
    publisher: Publisher,
    settings: Settings,
    limiter: Limiter,
    breaker: KafkaBreaker,
    _key: PresentedApiKey,
) -> JSONResponse:
    """Accept one access event or a JSON array of them; 202 only once Kafka acknowledged every one."""
    identity = client_identity(request, settings)
    quota: Quota | None = None
    if limiter.enabled:
        quota = await limiter.hit_request(identity)
    body = await read_body(request, settings.max_request_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
    events = parse_items(payload, settings.max_events_per_request)
    if limiter.enabled:
        quota = await limiter.hit_events(identity, len(events)) or quota
    try:
        accepted = await breaker.call(publisher.publish, events)
    except CircuitBreakerOpen as exc:
        retry = str(max(1, math.ceil(exc.retry_after)))
        raise ApiError(
            503,
            f"Kafka is unavailable (circuit breaker {exc.name!r} is {exc.state}); nothing was accepted",
            code="broker_unavailable",
            details={"retry_after": float(retry)},
            headers={"Retry-After": retry},
        ) from None
    except ConnectionError as exc:  # BrokerUnavailable
        retry = str(max(1, math.ceil(breaker.retry_after or 1.0)))
        raise ApiError(
            503,
            f"{exc}; nothing was accepted",
            code="broker_unavailable",
            details={"retry_after": float(retry)},
            headers={"Retry-After": retry},
        ) from None
    return JSONResponse({"accepted": accepted}, status_code=202, headers=quota.headers() if quota else None)
