"""Probabilistic early expiration (XFetch), Vattani, Chierichetti and Lowenstein, VLDB 2015.

A reader recomputes before expiry when `now − δ·β·ln(rand()) ≥ expiry`: the closer to
expiry and the longer the computation (δ), the likelier. Under load exactly one early
refresh happens shortly before expiry, so a hot key never expires and no stampede forms.
β > 1 favours earlier refreshes; β = 1 is the paper's optimum.
"""

from __future__ import annotations

import math
import random

__all__ = ["should_refresh_early"]


def should_refresh_early(
    now: float, delta: float, expires_at: float, beta: float = 1.0, rand: float | None = None
) -> bool:
    r = random.random() if rand is None else rand  # noqa: S311  XFetch's early-expiry draw, not a secret
    r = min(max(r, 1e-12), 1.0)  # ln(0) is -inf: clamp so an unlucky draw is just "very early"
    return now - delta * beta * math.log(r) >= expires_at
