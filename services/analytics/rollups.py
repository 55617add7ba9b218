"""Reading the rollups (primary migrations 0006 and 0007): a range is split into whole buckets, read from
the rollups, and partial buckets at its ends, read from raw rows.

A rollup holds counts per bucket of event time at a coarse level (a month or an ISO week) and
a fine one (a day or an hour). `cover()` splits `[start, end)` greedily: whole months from the month table,
then whole fine buckets for what is left at either end, then raw rows for the rest (less than
one fine bucket at each end). Rows stored after the rollup's watermark (not rolled up yet) are
read raw too, for the part of the range the rollups cover. The people and hours rollups build a
coarse bucket from its fine ones once it has ended (`compact`, primary migration 0010); until
then it is marked stale and read from the fine level. The watermark, the stale marks, the
rollups and the raw rows are read in one REPEATABLE READ snapshot, so every row counts exactly
once.

`parts()` turns that plan into one SQL relation of partial aggregates with the same columns
whichever source a part comes from; the analyses aggregate it like they would aggregate raw
events. With `use_rollups=False` the relation is the raw rows alone: the reference the tests
and `bench patterns` compare the rollup answers with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.analytics.filters import EventFilter

Level = Literal["month", "week", "day", "hour"]
Connection = asyncpg.Connection | PoolConnectionProxy

HOUR_SQL = "extract(hour FROM time AT TIME ZONE 'UTC')::smallint"
ISODOW_SQL = "extract(isodow FROM time AT TIME ZONE 'UTC')::smallint"


@dataclass(frozen=True)
class Rollup:
    """One rollup: its tables (`access_rollup_<name>_<level>`), dimensions and measures."""

    name: str
    levels: tuple[Level, ...]  # coarse to fine
    dims: dict[str, str]  # dimension -> its expression over access_events
    # measure -> (expression over the rollup table, expression over raw rows); both are partial
    # aggregates that the caller merges (sum of counts, min of minimums, max of maximums)
    measures: dict[str, tuple[str, str]] = field(default_factory=lambda: {"n": ("n", "count(*)")})
    # what the raw expressions read: access_events, or a subquery of it adding computed columns
    # (with time, facility_id, ingest_xid and seq, which the range and watermark clauses use)
    raw_from: str = "access_events"

    def table(self, level: Level) -> str:
        return f"access_rollup_{self.name}_{level}"


TIME = Rollup(
    "time",
    ("month", "hour"),
    {"hr": HOUR_SQL, "dow": ISODOW_SQL, "access_result": "access_result", "badge_status": "badge_status"},
    {
        "n": ("n", "count(*)"),
        "first_time": ("first_time", "min(time)"),
        "last_time": ("last_time", "max(time)"),
    },
)
PEOPLE = Rollup(
    "people",
    ("month", "day"),
    {"person_id": "person_id", "door_id": "door_id", "access_result": "access_result"},
)

HOURS_OF_DAY = tuple(f"h{hr:02d}" for hr in range(24))
# Per person, how many of their events fall in each UTC hour of the day: the anomaly
# detector's hour profiles (one column per hour; see migration 0007 for why not one row each).
HOURS = Rollup(
    "hours",
    ("week", "day"),
    {"person_id": "person_id"},
    # integer like the rollup columns: a union with bigint counts would make every sum numeric
    {c: (c, f"(count(*) FILTER (WHERE hr = {hr}))::integer") for hr, c in enumerate(HOURS_OF_DAY)},
    raw_from=(
        f"(SELECT time, facility_id, person_id, ingest_xid, seq, {HOUR_SQL} AS hr "  # noqa: S608  fixed SQL text
        "FROM access_events) AS access_events"
    ),
)


def floor_to(t: datetime, level: Level) -> datetime:
    """The start of the UTC bucket holding `t`."""
    t = t.astimezone(UTC)
    if level == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if level == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    if level == "week":  # ISO weeks begin on Monday, like date_trunc('week', ...)
        return t.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=t.weekday())
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(bucket: datetime, level: Level) -> datetime:
    if level == "hour":
        return bucket + timedelta(hours=1)
    if level == "day":
        return bucket + timedelta(days=1)
    if level == "week":
        return bucket + timedelta(days=7)
    return (
        bucket.replace(year=bucket.year + 1, month=1)
        if bucket.month == 12
        else bucket.replace(month=bucket.month + 1)
    )


def ceil_to(t: datetime, level: Level) -> datetime:
    """The start of the first UTC bucket that begins at or after `t`."""
    bucket = floor_to(t, level)
    return bucket if bucket == t else _next(bucket, level)


@dataclass(frozen=True)
class Piece:
    """`[start, end)` (None = unbounded) read from one level's table, or raw when `level` is None."""

    level: Level | None
    start: datetime | None
    end: datetime | None


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def cover(
    start: datetime | None,
    end: datetime | None,
    levels: tuple[Level, ...],
    stale: frozenset[datetime] = frozenset(),
) -> list[Piece]:
    """Pieces that partition `[start, end)`: as much as possible from the coarsest level, then
    the finer ones for what is left at either end, raw rows for the rest. The coarsest level's
    buckets in `stale` (not rebuilt since their fine rows changed) are read from the finer ones."""
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and start >= end:
        return []
    if not levels:
        return [Piece(None, start, end)]
    level, finer = levels[0], levels[1:]
    first = ceil_to(start, level) if start is not None else None
    last = floor_to(end, level) if end is not None else None
    if first is not None and last is not None and first >= last:
        if start is not None and end is not None and first == last and start < first < end:
            # No whole bucket, but a bucket boundary inside: a partial bucket on either side,
            # so that no piece left to finer levels (or raw rows) spans a whole bucket.
            return cover(start, first, finer) + cover(first, end, finer)
        return cover(start, end, finer)
    pieces = _around(level, first, last, stale, finer)
    if start is not None and first is not None and start < first:
        pieces = cover(start, first, finer) + pieces
    if end is not None and last is not None and last < end:
        pieces = pieces + cover(last, end, finer)
    return pieces


def _around(
    level: Level,
    start: datetime | None,
    end: datetime | None,
    stale: frozenset[datetime],
    finer: tuple[Level, ...],
) -> list[Piece]:
    """Whole `level` buckets `[start, end)`, with those in `stale` covered by the finer levels:
    each run of consecutive stale buckets as one range (a backfill of years marks hundreds of
    months and weeks until they are built, and every piece is a branch of the query)."""
    runs: list[tuple[datetime, datetime]] = []
    for bucket in sorted(b for b in stale if (start is None or b >= start) and (end is None or b < end)):
        if runs and runs[-1][1] == bucket:
            runs[-1] = (runs[-1][0], _next(bucket, level))
        else:
            runs.append((bucket, _next(bucket, level)))
    pieces, at = [], start
    for run_start, run_end in runs:
        if at is None or at < run_start:
            pieces.append(Piece(level, at, run_start))
        pieces += cover(run_start, run_end, finer)
        at = run_end
    if at is None or end is None or at < end:
        pieces.append(Piece(level, at, end))
    return pieces


@dataclass(frozen=True)
class Watermark:
    """What the rollups hold in a snapshot: every row up to the last one rolled up, in commit
    order (xid8 as text: it can exceed a signed 64-bit int), except in the coarse buckets marked
    stale (rollup name, bucket start: primary migration 0010), whose fine rows hold it instead."""

    last_xid: str
    last_seq: int
    stale: frozenset[tuple[str, datetime]] = frozenset()

    def stale_buckets(self, rollup: Rollup) -> frozenset[datetime]:
        return frozenset(bucket for name, bucket in self.stale if name == rollup.name)


class Params:
    """Positional SQL parameters collected while a query is built."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _range_sql(column: str, start: datetime | None, end: datetime | None, params: Params) -> list[str]:
    clauses = []
    if start is not None:
        clauses.append(f"{column} >= {params.add(start)}")
    if end is not None:
        clauses.append(f"{column} < {params.add(end)}")
    return clauses


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def parts(
    rollup: Rollup,
    flt: EventFilter,
    columns: list[str],
    params: Params,
    watermark: Watermark | None,
) -> str:
    """A relation of (`columns` dims..., measures...) partial aggregates equal, once merged, to
    aggregating the raw events that match `flt`. `watermark` None: raw rows only."""
    facility: list[str] = []
    if flt.facility_id is not None:
        facility = [f"facility_id = {params.add(flt.facility_id)}"]
    raw_dims = ", ".join(f"{rollup.dims[c]} AS {c}" for c in columns)
    group = ", ".join(str(i + 1) for i in range(len(columns)))
    rolled_measures = ", ".join(f"{sql} AS {m}" for m, (sql, _) in rollup.measures.items())
    raw_measures = ", ".join(f"{sql} AS {m}" for m, (_, sql) in rollup.measures.items())
    select_dims = f"{', '.join(columns)}, " if columns else ""
    select_raw_dims = f"{raw_dims}, " if columns else ""
    group_by = f" GROUP BY {group}" if columns else ""

    def raw(condition: list[str]) -> str:
        where = _where(condition + facility)
        return f"SELECT {select_raw_dims}{raw_measures} FROM {rollup.raw_from}{where}{group_by}"  # noqa: S608  fixed SQL fragments; every value is a $n parameter

    if watermark is None:
        return raw(_range_sql("time", flt.start, flt.end, params))
    out: list[str] = []
    edges: list[str] = []
    for piece in cover(flt.start, flt.end, rollup.levels, watermark.stale_buckets(rollup)):
        if piece.level is None:
            edge = _range_sql("time", piece.start, piece.end, params)
            edges.append("(" + " AND ".join(edge or ["TRUE"]) + ")")
            out.append(raw(edge))
        else:
            where = _where(_range_sql("bucket", piece.start, piece.end, params) + facility)
            out.append(f"SELECT {select_dims}{rolled_measures} FROM {rollup.table(piece.level)}{where}")  # noqa: S608  fixed SQL fragments; every value is a $n parameter
    # Rows not rolled up yet, inside the part of the range the rollups answer for.
    tail = [
        f"(ingest_xid, seq) > ({params.add(watermark.last_xid, '::text::xid8')}, "
        f"{params.add(watermark.last_seq, '::bigint')})",
        *_range_sql("time", _utc(flt.start), _utc(flt.end), params),
    ]
    if edges:
        tail.append("NOT (" + " OR ".join(edges) + ")")
    out.append(raw(tail))
    return "\n UNION ALL ".join(out)


_WATERMARK_SQL = "SELECT last_xid::text AS last_xid, last_seq FROM access_rollup_state WHERE id"
_STALE_SQL = "SELECT rollup, bucket FROM access_rollup_stale"


@asynccontextmanager
async def snapshot(
    pool: asyncpg.Pool, *, use_rollups: bool = True
) -> AsyncIterator[tuple[Connection, Watermark | None]]:
    """A connection in a read-only REPEATABLE READ transaction, with the rollups' watermark as
    of that snapshot (None when `use_rollups` is false)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        watermark: Watermark | None = None
        if use_rollups:
            # The union of rollup and raw parts is estimated above jit_above_cost, yet runs in
            # milliseconds: compiling it took longer than running it.
            await conn.execute("SET LOCAL jit = off")
            row = await conn.fetchrow(_WATERMARK_SQL)
            if row is None:
                raise RuntimeError("access_rollup_state has lost its row: apply the primary migrations")
            stale = frozenset((r["rollup"], r["bucket"]) for r in await conn.fetch(_STALE_SQL))
            watermark = Watermark(row["last_xid"], int(row["last_seq"]), stale)
        yield conn, watermark


REFRESH_SQL = "SELECT access_rollups_refresh($1)"

# A bulk upload holds this advisory lock, shared, on each of its writer connections while it
# writes; the refresher skips its turn while anyone holds it. Refreshing during an upload made
# the two compete for the same database cores: `bench upload` measured 67,000 rows/s with the
# refresher running against 101,000 without, while rolling up the whole file afterwards costs
# the same rows once. Answers stay correct meanwhile: rows past the watermark are read raw.
# Two int4 keys, so pg_locks shows them as classid and objid with objsubid 2.
UPLOAD_LOCK_KEYS = (0x5E17, 0x0A1D)
_HOLD_SQL = "SELECT pg_advisory_lock_shared($1, $2)"
_RELEASE_SQL = "SELECT pg_advisory_unlock_shared($1, $2)"
_UPLOAD_WRITING_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2"
    # Advisory locks belong to a database: another database on the server is another fleet.
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)
_LOCK_TIMEOUT_S = 10.0


@asynccontextmanager
async def holding_refresh_back(conn: Connection) -> AsyncIterator[None]:
    """Tell every refresher, in any analytics process, to wait while this connection writes.

    Nobody takes the lock exclusively, so taking it never waits. If releasing it fails the
    connection is broken (the lock ended with its session) or goes back to the pool, whose reset
    runs `pg_advisory_unlock_all()`: a lost release never holds refreshes back for good."""
    await conn.execute(_HOLD_SQL, *UPLOAD_LOCK_KEYS, timeout=_LOCK_TIMEOUT_S)
    try:
        yield
    finally:
        with suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            await conn.execute(_RELEASE_SQL, *UPLOAD_LOCK_KEYS, timeout=_LOCK_TIMEOUT_S)


async def upload_writing(executor: asyncpg.Pool | Connection) -> bool:
    """Whether some session holds `UPLOAD_LOCK_KEYS` (an upload is writing)."""
    return bool(await executor.fetchval(_UPLOAD_WRITING_SQL, *UPLOAD_LOCK_KEYS, timeout=_LOCK_TIMEOUT_S))


# Age of the oldest stored event not rolled up yet (by when it was stored), NULL when caught up:
# the first row past the watermark in commit order, one step down the replication cursor's index.
_BACKLOG_SQL = """
SELECT greatest(0, extract(epoch FROM clock_timestamp() - e.ingested_at))::float8
  FROM access_rollup_state s
  CROSS JOIN LATERAL (
        SELECT ingested_at FROM access_events
         WHERE (ingest_xid, seq) > (s.last_xid, s.last_seq)
         ORDER BY ingest_xid, seq
         LIMIT 1) e
 WHERE s.id
"""


async def backlog_seconds(executor: asyncpg.Pool | Connection, *, timeout_s: float = 10.0) -> float:
    """How long the oldest stored event not rolled up yet has waited; 0 when caught up. While it
    grows, cold answers read more raw rows (still right, slower)."""
    age = await executor.fetchval(_BACKLOG_SQL, timeout=timeout_s)
    return float(age) if age is not None else 0.0


async def refresh(executor: asyncpg.Pool | Connection, max_rows: int = 50_000) -> int:
    """Roll up at most `max_rows` more rows; returns how many (0: caught up or another session
    is refreshing)."""
    return int(await executor.fetchval(REFRESH_SQL, max_rows))


COMPACT_SQL = "SELECT access_rollups_compact(make_interval(secs => $1), $2)"


async def compact(
    executor: asyncpg.Pool | Connection, *, settled_s: float, max_buckets: int = 4, timeout_s: float = 120.0
) -> int:
    """Rebuild at most `max_buckets` stale coarse buckets (months, weeks) from their fine rows,
    those that have ended and that no refresh has touched for `settled_s`; returns how many (0:
    none due, or a refresh holds the lock)."""
    return int(await executor.fetchval(COMPACT_SQL, settled_s, max_buckets, timeout=timeout_s))


# Every row a store offers access_events draws a value from the identity sequence behind `seq`,
# stored or refused as a duplicate: how fast it grows is how hard the writers are working the
# database, read without a scan (a sequence is one tuple) and without waiting for statistics.
_ROWS_OFFERED_SQL = (
    "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('access_events', 'seq')::regclass), 0)"
)


async def rows_offered(executor: asyncpg.Pool | Connection, *, timeout_s: float = 10.0) -> int:
    """A counter of the rows writers have offered access_events so far (it only grows)."""
    return int(await executor.fetchval(_ROWS_OFFERED_SQL, timeout=timeout_s))
