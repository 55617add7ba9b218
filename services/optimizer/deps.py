"""Typed request dependencies of the optimizer's routes."""

from __future__ import annotations

# Every dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hand-off per dependency per request for what is an attribute read.
from typing import Annotated

from fastapi import Depends, Request

from services.optimizer.optimizer import Optimizer


async def get_optimizer(request: Request) -> Optimizer:
    optimizer: Optimizer = request.app.state.optimizer
    return optimizer


OptimizerDep = Annotated[Optimizer, Depends(get_optimizer)]
