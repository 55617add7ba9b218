"""Analytics settings: the fleet's, plus the analytics service's own."""

from __future__ import annotations

from functools import lru_cache

from shared.settings import FleetSettings


class AnalyticsSettings(FleetSettings):
    pass


@lru_cache(maxsize=1)
def get_settings() -> AnalyticsSettings:
    return AnalyticsSettings()
