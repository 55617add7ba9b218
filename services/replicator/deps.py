"""Typed request dependencies of the replicator's routes."""

from __future__ import annotations

# Every dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hand-off per dependency per request for what is an attribute read.
from typing import Annotated

from fastapi import Depends, Request

from services.replicator.service import ReplicatorService


async def get_replicator(request: Request) -> ReplicatorService:
    service: ReplicatorService = request.app.state.replicator
    return service


Replicator = Annotated[ReplicatorService, Depends(get_replicator)]
