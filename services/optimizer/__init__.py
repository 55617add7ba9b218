"""Optimizer: watches the fleet's metrics and resources and tunes the other services.

`services.optimizer.start()` starts one in the running event loop (see optimizer.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.optimizer.optimizer import Optimizer
    from services.optimizer.settings import OptimizerSettings

__version__ = "0.1.0"
__all__ = ["__version__", "start"]


def start(settings: OptimizerSettings | None = None) -> Optimizer:
    """Start an optimizer in the running event loop; `await optimizer.stop()` ends it."""
    from services.optimizer.optimizer import start as _start

    return _start(settings)
