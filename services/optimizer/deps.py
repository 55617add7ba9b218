"""Typed request dependencies of the optimizer's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.optimizer.optimizer import Optimizer


def get_optimizer(request: Request) -> Optimizer:
    optimizer: Optimizer = request.app.state.optimizer
    return optimizer


OptimizerDep = Annotated[Optimizer, Depends(get_optimizer)]
