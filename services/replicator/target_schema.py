"""The replica's schema: the SQL migrations, then TimescaleDB features when the extension exists."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from services.replicator.settings import ReplicatorSettings
from shared.db import apply_migrations

log = logging.getLogger(__name__)

TABLE = "access_events_replica"


@dataclass(frozen=True)
class SchemaReport:
    timescale: bool
    hypertable: bool
    compression_after: str | None
    retention: str | None


async def prepare_target(dsn: str, settings: ReplicatorSettings) -> SchemaReport:
    """Apply the replica migrations; make the table a hypertable when TimescaleDB is available."""
    await apply_migrations(dsn, "replica")
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    try:
        available = await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if not available:
            log.info(
                "timescaledb extension not available in the target: %s stays a plain PostgreSQL table "
                "(no hypertable, compression or retention policies)",
                TABLE,
            )
            return SchemaReport(False, False, None, None)
        return await _enable_timescale(conn, settings)
    finally:
        await conn.close()


async def _enable_timescale(conn: asyncpg.Connection, settings: ReplicatorSettings) -> SchemaReport:
    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    await conn.execute(
        f"SELECT create_hypertable('{TABLE}', 'time', chunk_time_interval => $1::text::interval, "
        "if_not_exists => TRUE, migrate_data => TRUE)",
        settings.timescale_chunk_interval,
    )
    if settings.timescale_compress_after:
        # segmentby door: most replica queries are per door over a time range.
        await conn.execute(
            f"ALTER TABLE {TABLE} SET (timescaledb.compress, timescaledb.compress_segmentby = 'door_id', "
            "timescaledb.compress_orderby = 'time DESC')"
        )
        await conn.execute(
            f"SELECT add_compression_policy('{TABLE}', $1::text::interval, if_not_exists => TRUE)",
            settings.timescale_compress_after,
        )
    if settings.timescale_retention:
        await conn.execute(
            f"SELECT add_retention_policy('{TABLE}', $1::text::interval, if_not_exists => TRUE)",
            settings.timescale_retention,
        )
    log.info(
        "timescaledb: %s is a hypertable (chunks %s, compression after %s, retention %s)",
        TABLE,
        settings.timescale_chunk_interval,
        settings.timescale_compress_after or "off",
        settings.timescale_retention or "off",
    )
    return SchemaReport(True, True, settings.timescale_compress_after, settings.timescale_retention)
