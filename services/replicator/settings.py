"""Replicator settings: the fleet's, plus the replicator's own."""

from __future__ import annotations

from functools import lru_cache

from shared.settings import FleetSettings


class ReplicatorSettings(FleetSettings):
    pass


@lru_cache(maxsize=1)
def get_settings() -> ReplicatorSettings:
    return ReplicatorSettings()
