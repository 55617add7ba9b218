"""Typed request dependencies of the replicator's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.replicator.service import ReplicatorService


def get_replicator(request: Request) -> ReplicatorService:
    service: ReplicatorService = request.app.state.replicator
    return service


Replicator = Annotated[ReplicatorService, Depends(get_replicator)]
