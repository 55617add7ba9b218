"""Keeps the rollups close behind the stored events: a background task of the analytics service.

Every `interval_s` (and straight away again while a batch came back full) it rolls up the rows
stored since the last refresh, in commit order (`access_rollups_refresh`, primary migration
0006, extended by 0007, upserting in key order since 0008). Large, infrequent batches are
cheaper per row: the count of a person at a door is updated once per batch, however many of
their events the batch holds (measured by `python -m bench patterns`). Answers never depend on
it being current: readers take the rows not rolled up yet from `access_events`, so a stopped
refresher only makes cold answers slower, never wrong. Several analytics processes may run it: a
refresh that finds another in progress returns at once, and so does one that finds an upload
writing (`rollups.holding_refresh_back`): the upload's rows are rolled up once it ends, instead
of the two competing for the database's cores.

It also defers to a burst of ingestion, for the same reason: while writers offer rows faster
than `busy_rows_per_s` (a replay after an outage, a backfill through the broker), rolling up
behind them takes database time from them: `bench patterns` measured stores at the database's
limit at 0.75-0.82 of their rate beside a refresher that did not defer, and 0.96-1.04 beside
one that did. So it waits while the burst lasts, up to a lag
of `max_defer_s`; past that it refreshes at full speed, so the rollups never fall further behind
than that while the database can keep up. An upload writing is held back for, not deferred to
(it holds the refresher back for as long as it writes). The deferred rows cost the same when they are rolled
up after the burst; deferring moves the work to when the database has time for it.

Once caught up, a turn also rebuilds the months and weeks of the people and hours rollups that
have ended and that no batch has touched for `settle_s` (`rollups.compact`, primary migration
0010), a few per turn: a batch writes only their days, and readers read a bucket not rebuilt yet
from its days.

After each turn it reads how far behind the rollups are (`rollup_backlog_seconds`: the age of
the oldest stored event not rolled up yet), so a dashboard sees a refresher that is stopped,
failing, held back or outpaced, like `replication_backlog_seconds` for the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from prometheus_client import Counter, Gauge

from services.analytics import rollups

log = logging.getLogger(__name__)

ROLLUP_BACKLOG = Gauge(
    "rollup_backlog_seconds",
    "Age of the oldest stored event not rolled up yet (cold answers read it raw); 0 when caught up",
)
ROLLUP_ROWS = Counter("rollup_rows_total", "Stored events rolled up")
ROLLUP_HELD_BACK = Counter(
    "rollup_refreshes_held_back_total", "Refresher turns skipped because an upload was writing"
)
ROLLUP_DEFERRED = Counter(
    "rollup_refreshes_deferred_total",
    "Refresher turns skipped because writers offered rows faster than ROLLUP_DEFER_ABOVE_ROWS_PER_S",
)
ROLLUP_BUCKETS_BUILT = Counter(
    "rollup_coarse_buckets_built_total",
    "Months and weeks of the people and hours rollups rebuilt from their days once they had ended",
)
ROLLUP_FAILURES = Counter("rollup_refresh_failures_total", "Refresher turns that failed (database away)")

# Rows per refresh statement. A batch upserts each (day, person, door, result) and (day, person)
# it touches once, however many of their events it holds, so catching up in large batches
# upserts far fewer rows: 1,000,000 events of a busy site's day roll up in 1.8-1.9 s in batches
# of 500,000 against 2.5-2.7 s in batches of 200,000, and in 1.8 s in one batch. Where nearly
# every event is a row of its own (a year of a million people) there is nothing to share and
# the larger batch costs 2-5 % more. A statement's memory (its batch, materialised, and a hash
# table per rollup) and its time (about 6 s on that worst case) grow with the batch, so it stops
# at the size where the gain levels off.
BATCH_ROWS = 500_000


class RollupRefresher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval_s: float = 2.0,
        batch_rows: int = BATCH_ROWS,
        statement_timeout_s: float = 120.0,
        busy_rows_per_s: float = 20_000.0,
        max_defer_s: float = 600.0,
        settle_s: float = 60.0,
        buckets_per_turn: int = 4,
    ) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.statement_timeout_s = statement_timeout_s
        self.busy_rows_per_s = busy_rows_per_s
        self.max_defer_s = max_defer_s
        self.settle_s = settle_s
        self.buckets_per_turn = buckets_per_turn
        self.buckets_built = 0
        self.rows_total = 0
        self.seconds_total = 0.0
        self.held_back = 0  # turns skipped because an upload was writing
        self.deferred = 0  # turns skipped because ingestion was busy
        self.turns = 0  # turns the background task has finished
        self.probe_s = min(0.5, interval_s)  # how long a turn looks at the writers' pace
        self.looks = 0  # turns that looked at the writers' pace for `probe_s`
        # The writers' pace while the last batch was rolled up, when it came back full (the
        # next turn follows at once): that turn's look, instead of `probe_s` more of waiting.
        self._pace: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh_once(self) -> int:
        """Roll up the next rows; 0 when caught up, another session is refreshing, or an upload
        is writing (`rollups.holding_refresh_back`: the rows are rolled up once it ends). Caught
        up (fewer than `batch_rows`), rebuild the coarse buckets that are due."""
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            if await rollups.upload_writing(conn):
                self.held_back += 1
                ROLLUP_HELD_BACK.inc()
                return 0
            watch = self.max_defer_s > 0
            offered, looked = (await rollups.rows_offered(conn), time.monotonic()) if watch else (0, 0.0)
            done = int(
                await conn.fetchval(rollups.REFRESH_SQL, self.batch_rows, timeout=self.statement_timeout_s)
            )
            elapsed = time.monotonic() - looked
            if watch and done == self.batch_rows and elapsed >= self.probe_s:
                self._pace = (await rollups.rows_offered(conn) - offered) / elapsed
            if done < self.batch_rows:
                built = await rollups.compact(
                    conn,
                    settled_s=self.settle_s,
                    max_buckets=self.buckets_per_turn,
                    timeout_s=self.statement_timeout_s,
                )
                self.buckets_built += built
                ROLLUP_BUCKETS_BUILT.inc(built)
        ROLLUP_ROWS.inc(done)
        self.rows_total += done
        self.seconds_total += time.perf_counter() - started
        return done

    async def _ingestion_busy(self) -> bool:
        """Whether writers are offering rows faster than `busy_rows_per_s` now: over a short
        look (half a second at most), not since the last turn, so that a burst that has just
        ended does not defer the rolling up of what it stored. While it catches up (the last
        batch came back full and this turn follows it at once) the pace during that batch is
        the look: half a second of waiting per batch made catching up with 1,000,000 rows take
        7.7 s instead of 5.2 s (`bench patterns`)."""
        if self._pace is not None:
            pace, self._pace = self._pace, None
            return pace > self.busy_rows_per_s
        self.looks += 1
        first, started = await rollups.rows_offered(self.pool), time.monotonic()
        await asyncio.sleep(self.probe_s)
        offered, elapsed = await rollups.rows_offered(self.pool), time.monotonic() - started
        return (offered - first) / max(elapsed, 1e-3) > self.busy_rows_per_s

    async def _defers(self) -> bool:
        """Whether this turn waits for a burst of ingestion. An upload writing is not a burst to
        defer to: `refresh_once` holds back for it, counted as held back, for as long as it
        writes. With `max_defer_s` 0 it never looks."""
        if self.max_defer_s <= 0 or not await self._ingestion_busy():
            return False
        # Asked only in a burst: otherwise `refresh_once` asks, and a turn asks once.
        return not await rollups.upload_writing(self.pool)

    async def _turn(self) -> int | None:
        """One turn of the background task: defer to a burst of ingestion while the backlog is
        younger than `max_defer_s` (None), else `refresh_once` (rows rolled up); then publish
        the backlog."""
        try:
            if await self._defers():
                backlog = await rollups.backlog_seconds(self.pool)
                if backlog < self.max_defer_s:
                    self.deferred += 1
                    ROLLUP_DEFERRED.inc()
                    ROLLUP_BACKLOG.set(backlog)
                    return None
            done = await self.refresh_once()
            ROLLUP_BACKLOG.set(await rollups.backlog_seconds(self.pool))
            return done
        finally:
            self.turns += 1

    async def _run(self) -> None:
        await asyncio.sleep(self.interval_s)  # let the service finish starting first
        while True:
            try:
                done = await self._turn()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again later, answers stay correct
                done = 0
                ROLLUP_FAILURES.inc()
                if self.last_error is None:
                    log.warning("rollup refresh failed (%s: %s); retrying", type(exc).__name__, exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
            # A deferred turn looks again at once: its look at the writers paced it, and the
            # rolling up starts within `probe_s` of the burst's end.
            if done is not None and done < self.batch_rows:
                await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollup-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
