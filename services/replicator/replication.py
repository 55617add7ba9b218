"""One replication batch, in commit order, with the watermark committed together with the rows.

Why commit order and not `seq` or event time: event time goes backwards for late events, and a
sequence value is drawn when a row is inserted, not when its transaction commits, so a slow
transaction can make seq 41 visible after seq 42 was already copied. Every row carries the id
of the transaction that inserted it (`ingest_xid`, 64 bits, never wraps). A row is copied only
when its transaction id is below the xmin of the reading statement's snapshot: every
transaction below xmin has finished, so no row can later appear below the watermark
`(last_xid, last_seq)`. Rows are read in `(ingest_xid, seq)` order, and the watermark is the
pair of the last row copied.

The bytes travel source → target as binary COPY without being decoded in Python, into a
temporary staging table, then `INSERT ... ON CONFLICT (time, event_id) DO NOTHING` moves them
into the replica and the watermark row is updated, all in one target transaction. A crash at
any point either commits rows and watermark together or neither; rerunning a batch inserts
nothing twice. The watermark row is locked `FOR UPDATE` for the batch, so two replicators
started by mistake serialise instead of racing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.performance.operation import named_operation, operation

Connection = asyncpg.Connection | PoolConnectionProxy

# Column order is shared by the source COPY query and the staging table: binary COPY has no
# column names, only positions and types.
_COLUMNS = (
    ("event_id", "TEXT"),
    ("time", "TIMESTAMPTZ"),
    ("person_id", "TEXT"),
    ("door_id", "TEXT"),
    ("badge_id", "TEXT"),
    ("access_result", "TEXT"),
    ("badge_status", "TEXT"),
    ("door_held_open_time", "DOUBLE PRECISION"),
    ("entry_without_badge", "BOOLEAN"),
    ("device_status", "TEXT"),
    ("facility_id", "TEXT"),
    ("extra", "JSONB"),
    ("ingested_at", "TIMESTAMPTZ"),
    ("seq", "BIGINT"),
    ("ingest_xid", "XID8"),
)
_NAMES = ", ".join(name for name, _ in _COLUMNS)
_EVENT_NAMES = ", ".join(name for name, _ in _COLUMNS[:13])

STAGING_TABLE = "replication_staging"
_STAGING_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} ("
    + ", ".join(f"{name} {sql_type}" for name, sql_type in _COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)

# pg_current_snapshot() is the snapshot of this very statement, so the xmin bound and the rows
# it returns are consistent with each other.
_SELECT_BATCH = f"""
SELECT {_NAMES} FROM access_events
WHERE ingest_xid < pg_snapshot_xmin(pg_current_snapshot())
  AND (ingest_xid, seq) > ($1::text::xid8, $2::bigint)
ORDER BY ingest_xid, seq
LIMIT $3::int
"""  # noqa: S608  the interpolated names are module constants (columns, staging table)

# Sorted by the replica's key so the B-tree is filled in order rather than at random pages.
# Read the batch by walking the (ingest_xid, seq) index from the watermark. After a bulk load
# the statistics lag (estimated 30,000 rows left, actually 600,000) and the planner instead
# fetched every remaining row and sorted them on disk to return the first batch: 0.44 s per
# 50,000-row batch at a 600,000-row backlog, growing with the backlog (a 1,500,000-row upload
# replicated at 45,000 rows/s). Without sorts the index scan is the only plan left.
_ORDERED_READ = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off"

_INSERT_FROM_STAGING = f"""
INSERT INTO access_events_replica ({_EVENT_NAMES}, source_seq)
SELECT {_EVENT_NAMES}, seq FROM {STAGING_TABLE}
ORDER BY time, event_id
ON CONFLICT (time, event_id) DO NOTHING
"""  # noqa: S608  the interpolated names are module constants (columns, staging table)

_STAGING_SUMMARY = f"""
SELECT count(*) AS n, max(time) AS newest,
       (SELECT ingest_xid::text FROM {STAGING_TABLE} ORDER BY ingest_xid DESC, seq DESC LIMIT 1) AS last_xid,
       (SELECT seq FROM {STAGING_TABLE} ORDER BY ingest_xid DESC, seq DESC LIMIT 1) AS last_seq
FROM {STAGING_TABLE}
"""  # noqa: S608  the interpolated names are module constants (columns, staging table)

_LOCK_STATE = """
SELECT last_xid::text AS last_xid, last_seq, rows_total FROM replication_state WHERE stream = $1 FOR UPDATE
"""

_ENSURE_STATE = """
INSERT INTO replication_state (stream, last_xid, last_seq, rows_total) VALUES ($1, '0'::xid8, 0, 0)
ON CONFLICT (stream) DO NOTHING
"""

_UPDATE_STATE = """
UPDATE replication_state
SET last_xid = $2::text::xid8, last_seq = $3, rows_total = rows_total + $4, updated_at = now()
WHERE stream = $1
"""

_BACKLOG = """
SELECT EXTRACT(EPOCH FROM now() - ingested_at)::float8 FROM access_events
WHERE (ingest_xid, seq) > ($1::text::xid8, $2::bigint)
ORDER BY ingest_xid, seq LIMIT 1
"""

# Exactly the original definition: NOW() minus the newest replicated event time.
_LAG = "SELECT EXTRACT(EPOCH FROM now() - max(time))::float8 FROM access_events_replica"


class SourceError(Exception):
    """Reading the primary failed (the cause is chained)."""


class TargetError(Exception):
    """Writing the replica failed (the cause is chained)."""


@dataclass(frozen=True)
class Watermark:
    last_xid: str  # xid8 as text: it can exceed what asyncpg decodes as a signed integer
    last_seq: int
    rows_total: int


@dataclass(frozen=True)
class BatchResult:
    rows_read: int
    rows_inserted: int
    watermark: Watermark
    newest_time: datetime | None
    seconds: float


async def ensure_state(target: Connection | asyncpg.Pool, stream: str) -> None:
    await target.execute(_ENSURE_STATE, stream)


@named_operation("db.read_watermark")
async def read_watermark(target: Connection | asyncpg.Pool, stream: str) -> Watermark:
    row = await target.fetchrow(
        "SELECT coalesce(last_xid, '0'::xid8)::text AS last_xid, last_seq, rows_total "
        "FROM replication_state WHERE stream = $1",
        stream,
    )
    if row is None:
        return Watermark("0", 0, 0)
    return Watermark(str(row["last_xid"]), int(row["last_seq"]), int(row["rows_total"]))


async def replicate_batch(
    source: Connection,
    target: Connection,
    *,
    stream: str,
    batch_size: int,
    timeout_s: float = 300.0,
) -> BatchResult:
    """Copy at most `batch_size` committed rows past the watermark; one target transaction.

    Raises SourceError or TargetError naming the database that failed; in both cases nothing
    is committed.
    """
    started = time.perf_counter()
    try:
        await target.execute(_STAGING_DDL)
        async with target.transaction():
            state = await target.fetchrow(_LOCK_STATE, stream, timeout=timeout_s)
            if state is None:
                raise TargetError(f"replication_state has no row for stream {stream!r}")
            last_xid, last_seq = str(state["last_xid"] or "0"), int(state["last_seq"])
            rows_total = int(state["rows_total"])
            chunks: list[bytes] = []

            async def collect(chunk: bytes) -> None:
                chunks.append(chunk)

            try:
                with operation("replicator.read"):
                    async with source.transaction(readonly=True):
                        await source.execute(_ORDERED_READ)
                        await source.copy_from_query(
                            _SELECT_BATCH,
                            last_xid,
                            last_seq,
                            batch_size,
                            output=collect,
                            format="binary",
                            timeout=timeout_s,
                        )
            except Exception as exc:
                raise SourceError(f"{type(exc).__name__}: {exc}") from exc

            with operation("replicator.copy") as copy_span:
                await target.copy_to_table(
                    STAGING_TABLE, source=_replay(chunks), format="binary", timeout=timeout_s
                )
                summary = await target.fetchrow(_STAGING_SUMMARY, timeout=timeout_s)
                assert summary is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
                rows_read = int(summary["n"])
                if rows_read == 0:
                    watermark = Watermark(last_xid, last_seq, rows_total)
                    return BatchResult(0, 0, watermark, None, time.perf_counter() - started)
                status = await target.execute(_INSERT_FROM_STAGING, timeout=timeout_s)
                inserted = int(status.rsplit(" ", 1)[-1])
                copy_span.set_attribute("rows", rows_read)
            new_xid, new_seq = str(summary["last_xid"]), int(summary["last_seq"])
            with operation("replicator.watermark"):
                await target.execute(_UPDATE_STATE, stream, new_xid, new_seq, inserted, timeout=timeout_s)
    except (SourceError, TargetError):
        raise
    except Exception as exc:
        raise TargetError(f"{type(exc).__name__}: {exc}") from exc
    watermark = Watermark(new_xid, new_seq, rows_total + inserted)
    return BatchResult(rows_read, inserted, watermark, summary["newest"], time.perf_counter() - started)


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@named_operation("db.replication_backlog")
async def backlog_seconds(source: Connection | asyncpg.Pool, watermark: Watermark) -> float:
    """Age of the first not-yet-replicated row in commit order (0 when caught up)."""
    value = await source.fetchval(_BACKLOG, watermark.last_xid, watermark.last_seq)
    return max(0.0, float(value)) if value is not None else 0.0


@named_operation("db.replication_lag")
async def lag_seconds(target: Connection | asyncpg.Pool) -> float | None:
    value = await target.fetchval(_LAG)
    return float(value) if value is not None else None
