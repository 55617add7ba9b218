"""Analytics settings: the fleet's, plus the analytics service's own."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import FleetSettings


class AnalyticsSettings(FleetSettings):
    cache_warm_on_start: bool = Field(True, validation_alias="CACHE_WARM_ON_START")
    upload_max_bytes: int = Field(1 << 30, ge=1024, validation_alias="ANALYTICS_UPLOAD_MAX_BYTES")


@lru_cache(maxsize=1)
def get_settings() -> AnalyticsSettings:
    return AnalyticsSettings()
