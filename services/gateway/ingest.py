"""`POST /api/v1/events`: validate every item, publish all or none, answer after the broker acks."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.gateway.publisher import BrokerUnavailable, EventPublisher
from services.gateway.settings import GatewaySettings
from shared.errors import ApiError, validation_details
from shared.events import AccessEvent

router = APIRouter(prefix="/api/v1", tags=["events"])

RETRY_AFTER_S = "5"


def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


def get_gateway_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


Publisher = Annotated[EventPublisher, Depends(get_publisher)]
Settings = Annotated[GatewaySettings, Depends(get_gateway_settings)]


def parse_items(payload: Any, max_items: int) -> list[AccessEvent]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ApiError(422, "the request holds no events", code="empty_batch")
    if len(items) > max_items:
        raise ApiError(413, f"{len(items)} events in one request; the maximum is {max_items}",
                       details={"max_events_per_request": max_items})
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
            errors.append({
                "index": index,
                "reason": "; ".join(f"{d['loc']}: {d['message']}" for d in details),
                "fields": details,
            })
    if errors:
        raise ApiError(422, f"{len(errors)} of {len(items)} events are invalid; none were accepted",
                       code="invalid_events", details=errors)
    return events


@router.post("/events", status_code=202, responses={
    413: {"description": "too many events or too large a body"},
    422: {"description": "invalid events, with index and reason of each"},
    503: {"description": "Kafka unavailable; retry after Retry-After seconds"},
})
async def post_events(request: Request, publisher: Publisher, settings: Settings) -> JSONResponse:
    """Accept one access event or a JSON array of them."""
    body = await request.body()
    if len(body) > settings.max_request_bytes:
        raise ApiError(413, f"body of {len(body)} bytes exceeds {settings.max_request_bytes}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
    events = parse_items(payload, settings.max_events_per_request)
    try:
        accepted = await publisher.publish(events)
    except BrokerUnavailable as exc:
        raise ApiError(503, str(exc), code="broker_unavailable", headers={"Retry-After": RETRY_AFTER_S}) from None
    return JSONResponse({"accepted": accepted}, status_code=202)
