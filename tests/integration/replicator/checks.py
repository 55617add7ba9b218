"""Comparing the primary and the replica: row count and a checksum over every column of every row."""

from __future__ import annotations

import asyncpg

# The same text rendering of each row on both sides, ordered by the replica's key.
_CHECKSUM_SQL = """
SELECT count(*) AS n,
       coalesce(md5(string_agg(concat_ws('|', event_id, time, person_id, door_id, badge_id, access_result,
                                         badge_status, door_held_open_time, entry_without_badge,
                                         device_status, facility_id, extra::text, ingested_at),
                               E'\\n' ORDER BY time, event_id)), '') AS checksum
FROM {table}
"""


async def table_checksum(dsn: str, table: str) -> tuple[int, str]:
    assert table in {"access_events", "access_events_replica"}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        row = await conn.fetchrow(_CHECKSUM_SQL.format(table=table))
    finally:
        await conn.close()
    assert row is not None
    return int(row["n"]), str(row["checksum"])


async def assert_replica_matches(primary_dsn: str, replica_dsn: str) -> int:
    primary = await table_checksum(primary_dsn, "access_events")
    replica = await table_checksum(replica_dsn, "access_events_replica")
    assert replica == primary, f"primary {primary} != replica {replica}"
    return primary[0]
