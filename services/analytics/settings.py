"""Analytics settings: the fleet's, plus the analytics service's own."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator

from shared.settings import FleetSettings


class AnalyticsSettings(FleetSettings):
    cache_warm_on_start: bool = Field(True, validation_alias="CACHE_WARM_ON_START")
    upload_max_bytes: int = Field(
        1 << 30,
        ge=1024,
        validation_alias=AliasChoices("UPLOAD_MAX_BYTES", "ANALYTICS_UPLOAD_MAX_BYTES"),
        description="largest CSV file accepted by POST /api/v1/uploads (bytes); larger is 413",
    )
    upload_spool_dir: Path | None = Field(
        None,
        validation_alias="UPLOAD_SPOOL_DIR",
        description="where uploads are spooled while they are stored; unset = the system temp dir. "
        "Give it room for UPLOAD_MAX_BYTES times the concurrent uploads",
    )

    anomalies_default_window_days: float = Field(
        31,
        gt=0,
        validation_alias="ANOMALIES_DEFAULT_WINDOW_DAYS",
        description="span analysed by GET /api/v1/analytics/anomalies when `start` is not given",
    )
    anomalies_max_window_days: float = Field(
        92,
        gt=0,
        validation_alias="ANOMALIES_MAX_WINDOW_DAYS",
        description="longest span the anomaly analysis covers; a longer request is 422",
    )

    rollup_defer_above_rows_per_s: float = Field(
        20_000,
        gt=0,
        validation_alias="ROLLUP_DEFER_ABOVE_ROWS_PER_S",
        description="while writers offer rows faster than this, the rollup refresher waits",
    )
    rollup_max_defer_s: float = Field(
        600,
        ge=0,
        le=86_400,
        validation_alias="ROLLUP_MAX_DEFER_S",
        description="longest the refresher waits for a burst of ingestion (rollup lag); 0: never",
    )

    @field_validator("upload_spool_dir", mode="before")
    @classmethod
    def _empty_spool_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value


@lru_cache(maxsize=1)
def get_settings() -> AnalyticsSettings:
    return AnalyticsSettings()
