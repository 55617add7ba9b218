"""Writing access events to PostgreSQL: one round-trip per batch, at most once per event_id."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.events import AccessEvent, event_record

# unnest of typed arrays turns a whole batch into one statement; ON CONFLICT DO NOTHING makes
# redelivered and re-uploaded events (including duplicates inside one batch) harmless.
INSERT_EVENTS_SQL = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, badge_status,
                           door_held_open_time, entry_without_badge, device_status, facility_id, extra)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::float8[], $9::bool[], $10::text[], $11::text[], $12::jsonb[])
ON CONFLICT (event_id) DO NOTHING
"""


def _columns(events: Sequence[AccessEvent]) -> list[list[object]]:
    columns: list[list[object]] = [[] for _ in range(12)]
    for event in events:
        for column, value in zip(columns, event_record(event), strict=True):
            column.append(value)
    return columns


async def store_events(executor: asyncpg.Pool | asyncpg.Connection, events: Sequence[AccessEvent]) -> int:
    """Insert `events`; returns how many were new (the rest were already stored)."""
    if not events:
        return 0
    status = await executor.execute(INSERT_EVENTS_SQL, *_columns(events))
    # asyncpg returns the command tag, "INSERT 0 <rows>".
    return int(status.rsplit(" ", 1)[-1])
