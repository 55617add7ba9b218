"""The processor's sink: one COPY per batch through the `database` breaker.

Only an unavailable database (`DATABASE_DOWN`) may hold a batch. A batch that fails for any
other reason (PostgreSQL refusing a value, a value the driver cannot encode) would block the
partition forever if retried as a whole, so it is stored event by event and the events that
fail on their own are handed back (by index) for the dead-letter topic. The vocabulary's rules make this
rare; this is the net under them.

Two stores run at once (the processor keeps several batches in flight). Two transactions that
insert the same event_id (a redelivered message in both) wait on each other's keys, and can
deadlock (SQLSTATE 40P01) when each holds a key the other needs. That says nothing about the rows:
PostgreSQL aborted one transaction to let the other finish, so the whole batch is tried again
after a short, jittered pause (`CONFLICT_RETRIES` times), never stored event by event, never
dead-lettered. Past that the conflict is raised and the processor holds the batch and retries it
with backoff, as for an unavailable database (`holds_batch`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from shared.breaker import CircuitBreaker, CircuitBreakerOpen
from shared.event_fastpath import EventRow
from shared.event_store import store_event_rows

log = logging.getLogger(__name__)

# What "the database is unavailable" looks like. asyncpg's DataError (a value the driver cannot
# encode) is an InterfaceError too, but it blames the data: see `is_database_down`.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    CircuitBreakerOpen,
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)
# SQLSTATE classes that mean the server cannot serve: 08 connection exception, 53 insufficient
# resources, 57 operator intervention, 58 system error, XX internal error.
_SERVER_ERROR_CLASSES = ("08", "53", "57", "58", "XX")


# SQLSTATEs of a transaction aborted for another one's sake (deadlock, serialization failure):
# the same statement succeeds when tried again.
_CONFLICT_STATES = ("40P01", "40001")
CONFLICT_RETRIES = 5
_CONFLICT_PAUSE_S = 0.02


def is_conflict(exc: BaseException) -> bool:
    """A transaction aborted because of a concurrent one, not because of its rows."""
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, asyncpg.PostgresError) and sqlstate in _CONFLICT_STATES


def holds_batch(exc: BaseException) -> bool:
    """Whether the processor keeps the batch and retries it: the database is down, or a
    concurrent store kept aborting this one."""
    return is_database_down(exc) or is_conflict(exc)


def is_database_down(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.DataError):
        return False
    if isinstance(exc, DATABASE_DOWN):
        return True
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, asyncpg.PostgresError) and sqlstate.startswith(_SERVER_ERROR_CLASSES)


@dataclass
class StoreOutcome:
    inserted: int
    # Rows the database refused on their own: (index in the batch, reason).
    refused: list[tuple[int, str]] = field(default_factory=list)


class EventSink:
    def __init__(self, pool: asyncpg.Pool, breaker: CircuitBreaker) -> None:
        self.pool = pool
        self.breaker = breaker

    async def _store(self, rows: Sequence[EventRow]) -> int:
        async with self.pool.acquire() as conn:
            return await store_event_rows(conn, rows)

    async def store(self, rows: Sequence[EventRow]) -> StoreOutcome:
        """Store validated rows; raises CircuitBreakerOpen or a connection error when the database
        is down, and the conflict when concurrent stores aborted this one too often."""
        if not rows:
            return StoreOutcome(0)
        attempt = 0
        while True:
            try:
                inserted = await self.breaker.call(self._store, rows)
            except Exception as exc:
                if is_database_down(exc):
                    raise
                if is_conflict(exc):
                    attempt += 1
                    if attempt > CONFLICT_RETRIES:
                        raise
                    log.info("a concurrent store aborted a batch of %d events (%s); again", len(rows), exc)
                    # Jittered, so two stores aborting each other do not meet again at once.
                    await asyncio.sleep(_CONFLICT_PAUSE_S * attempt * (0.5 + random.random()))  # noqa: S311
                    continue
                log.warning(
                    "database refused a batch of %d events (%s); storing them one by one", len(rows), exc
                )
                return await self._one_by_one(rows)
            return StoreOutcome(inserted)

    async def _one_by_one(self, rows: Sequence[EventRow]) -> StoreOutcome:
        outcome = StoreOutcome(0)
        for index, row in enumerate(rows):
            try:
                outcome.inserted += await self.breaker.call(self._store, [row])
            except Exception as exc:
                if holds_batch(exc):
                    raise
                outcome.refused.append((index, f"{type(exc).__name__}: {exc}"))
        return outcome
