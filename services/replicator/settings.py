"""Replicator settings: the fleet's (REPLICATION_INTERVAL, REPLICATION_BATCH_SIZE), plus its own."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.settings import FleetSettings


class ReplicatorSettings(FleetSettings):
    replication_stream: str = Field("access_events", validation_alias="REPLICATION_STREAM")
    replication_backoff_max_s: float = Field(30.0, gt=0, validation_alias="REPLICATION_BACKOFF_MAX")
    replication_statement_timeout_s: float = Field(
        300.0, gt=0, validation_alias="REPLICATION_STATEMENT_TIMEOUT"
    )
    # TimescaleDB options, used only when the extension exists in the target. Values are
    # PostgreSQL interval strings ("7 days"); an empty value turns the policy off.
    timescale_chunk_interval: str = Field("7 days", validation_alias="TIMESCALE_CHUNK_INTERVAL")
    timescale_compress_after: str | None = Field("30 days", validation_alias="TIMESCALE_COMPRESS_AFTER")
    timescale_retention: str | None = Field(None, validation_alias="TIMESCALE_RETENTION")


@lru_cache(maxsize=1)
def get_settings() -> ReplicatorSettings:
    return ReplicatorSettings()
