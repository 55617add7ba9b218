"""Optimizer settings: the fleet's, plus the optimizer's own."""

from __future__ import annotations

from functools import lru_cache

from shared.settings import FleetSettings


class OptimizerSettings(FleetSettings):
    pass


@lru_cache(maxsize=1)
def get_settings() -> OptimizerSettings:
    return OptimizerSettings()
