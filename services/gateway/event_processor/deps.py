"""Typed request dependencies of the event processor's routes (also mounted in the gateway)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.gateway.event_processor.service import ProcessorService
from shared.errors import ApiError


def get_processor(request: Request) -> ProcessorService:
    processor: ProcessorService | None = getattr(request.app.state, "processor", None)
    if processor is None:
        raise ApiError(
            404,
            "this process runs no event processor (GATEWAY_RUN_EVENT_PROCESSOR=false)",
            code="no_event_processor",
        )
    return processor


Processor = Annotated[ProcessorService, Depends(get_processor)]
