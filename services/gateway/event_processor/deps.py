"""Typed request dependencies of the event processor's routes (also mounted in the gateway)."""

from __future__ import annotations

# Every dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hand-off per dependency per request for what is an attribute read.
from typing import Annotated

from fastapi import Depends, Request

from services.gateway.event_processor.service import ProcessorService
from shared.errors import ApiError


async def get_processor(request: Request) -> ProcessorService:
    processor: ProcessorService | None = getattr(request.app.state, "processor", None)
    if processor is None:
        raise ApiError(
            404,
            "this process runs no event processor (GATEWAY_RUN_EVENT_PROCESSOR=false)",
            code="no_event_processor",
        )
    return processor


Processor = Annotated[ProcessorService, Depends(get_processor)]
