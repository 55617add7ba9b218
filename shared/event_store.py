"""Writing access events to PostgreSQL: one round-trip per batch, at most once per event_id."""

from __future__ import annotations

import io
from collections.abc import Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import trace

from shared.events import EVENT_COLUMNS, AccessEvent, event_record
from shared.performance.operation import named_operation

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


@named_operation("db.insert_events")
async def store_events(executor: asyncpg.Pool | asyncpg.Connection, events: Sequence[AccessEvent]) -> int:
    """Insert `events`; returns how many were new (the rest were already stored)."""
    if not events:
        return 0
    status = await executor.execute(INSERT_EVENTS_SQL, *_columns(events))
    # asyncpg returns the command tag, "INSERT 0 <rows>".
    return int(status.rsplit(" ", 1)[-1])


# Bulk paths for uploads. COPY moves rows several times faster than unnest() of parameter
# arrays. COPY cannot skip rows already stored, so when some may be, the rows go into a
# per-session staging table first and then through one idempotent INSERT ... SELECT with
# ON CONFLICT (event_id) DO NOTHING.
_STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS access_events_stage (
    event_id TEXT, time TIMESTAMPTZ, person_id TEXT, door_id TEXT, badge_id TEXT, access_result TEXT,
    badge_status TEXT, door_held_open_time DOUBLE PRECISION, entry_without_badge BOOLEAN,
    device_status TEXT, facility_id TEXT, extra JSONB
) ON COMMIT DELETE ROWS
"""
_FROM_STAGE_SQL = """
INSERT INTO access_events (event_id, time, person_id, door_id, badge_id, access_result, badge_status,
                           door_held_open_time, entry_without_badge, device_status, facility_id, extra)
SELECT event_id, time, person_id, door_id, badge_id, access_result, badge_status,
       door_held_open_time, entry_without_badge, device_status, facility_id, extra
FROM access_events_stage
ON CONFLICT (event_id) DO NOTHING
"""


# A connection, or one lent by a pool.
CopyConnection = asyncpg.Connection | PoolConnectionProxy

_FROM_STAGE_ORDERED_SQL = _FROM_STAGE_SQL.replace(
    "FROM access_events_stage", "FROM access_events_stage ORDER BY event_id"
)


async def copy_event_records(conn: CopyConnection, records: Sequence[tuple[object, ...]]) -> int:
    """Store already validated rows (EVENT_COLUMNS order) in one transaction; returns how many were new."""
    if not records:
        return 0
    async with conn.transaction():
        await conn.execute(_STAGE_SQL)
        await conn.copy_records_to_table("access_events_stage", records=records, columns=list(EVENT_COLUMNS))
        status = await conn.execute(_FROM_STAGE_SQL)
    return int(status.rsplit(" ", 1)[-1])


@named_operation("db.copy_events_csv")
async def copy_event_csv(conn: CopyConnection, data: bytes) -> int:
    """Store already validated rows given as CSV (EVENT_COLUMNS order, no header, empty unquoted
    field = NULL) in one transaction; returns how many were new. Lets a worker process prepare
    the payload so the service process only moves bytes."""
    if not data:
        return 0
    async with conn.transaction():
        await conn.execute(_STAGE_SQL)
        await conn.copy_to_table(
            "access_events_stage", source=io.BytesIO(data), columns=list(EVENT_COLUMNS), format="csv"
        )
        status = await conn.execute(_FROM_STAGE_SQL)
    return int(status.rsplit(" ", 1)[-1])


@named_operation("db.copy_events_binary")
async def copy_event_binary(conn: CopyConnection, data: bytes, *, direct: bool = True) -> tuple[int, bool]:
    """Store already validated rows given as a binary COPY payload (EVENT_COLUMNS order, see
    `COPY ... (FORMAT binary)`) in one transaction; returns (rows new, whether they went in directly).

    `direct` first COPYs straight into `access_events`: one pass, no staging table, and
    PostgreSQL's batched heap inserts. Any row already stored (or stored concurrently, or twice
    in the payload) makes that COPY fail as a whole with a unique violation; the payload then
    goes through the staging table with ON CONFLICT (event_id) DO NOTHING, ordered by event_id
    so two such transactions wait on each other's keys in one order. Callers that expect
    conflicts (a re-upload) pass `direct=False` to skip the doomed attempt.
    """
    if len(data) <= 21:  # signature and trailer only: no rows
        return 0, False
    columns = list(EVENT_COLUMNS)
    if direct:
        try:
            async with conn.transaction():
                status = await conn.copy_to_table(
                    "access_events", source=io.BytesIO(data), columns=columns, format="binary"
                )
            return int(status.rsplit(" ", 1)[-1]), True
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            pass
    for attempt in range(3):
        try:
            async with conn.transaction():
                await conn.execute(_STAGE_SQL)
                await conn.copy_to_table(
                    "access_events_stage", source=io.BytesIO(data), columns=columns, format="binary"
                )
                status = await conn.execute(_FROM_STAGE_ORDERED_SQL)
            return int(status.rsplit(" ", 1)[-1]), False
        except asyncpg.DeadlockDetectedError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _copy_span(table: str, columns: list[str]) -> trace.Span:
    """A client span for a COPY: the asyncpg instrumentation covers execute and fetch, not
    COPY, so without it the processor's store would show no statement in its trace."""
    return trace.get_tracer(__name__).start_span(
        f"COPY {table}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "db.system": "postgresql",
            "db.statement": f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)",
        },
    )


@named_operation("db.insert_events")
async def store_event_rows(conn: CopyConnection, rows: Sequence[tuple[object, ...]]) -> int:
    """Store validated rows (EVENT_COLUMNS order) idempotently in one transaction; returns how
    many were new. The event processor's path.

    Binary COPY straight into `access_events` first: one pass, batched heap inserts, no staging
    table. A redelivered batch (some rows already stored, or stored concurrently) makes that
    COPY fail as a whole with a unique violation; then the rows go through the staging table and
    ON CONFLICT (event_id) DO NOTHING, ordered by event_id so two such transactions take their
    keys in one order. Statement triggers (the written-rows NOTIFY) fire for both."""
    if not rows:
        return 0
    columns = list(EVENT_COLUMNS)
    try:
        async with conn.transaction():
            with trace.use_span(_copy_span("access_events", columns), end_on_exit=True):
                status = await conn.copy_records_to_table("access_events", records=rows, columns=columns)
        return int(status.rsplit(" ", 1)[-1])
    except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
        pass
    for attempt in range(3):
        try:
            async with conn.transaction():
                await conn.execute(_STAGE_SQL)
                with trace.use_span(_copy_span("access_events_stage", columns), end_on_exit=True):
                    await conn.copy_records_to_table("access_events_stage", records=rows, columns=columns)
                status = await conn.execute(_FROM_STAGE_ORDERED_SQL)
            return int(status.rsplit(" ", 1)[-1])
        except asyncpg.DeadlockDetectedError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
