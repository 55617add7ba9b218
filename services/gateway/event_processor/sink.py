"""The processor's sink: one COPY per batch through the `database` breaker.

Only an unavailable database (`DATABASE_DOWN`) may hold a batch. A batch that fails for any
other reason (PostgreSQL refusing a value, a value the driver cannot encode) would block the
partition forever if retried as a whole, so it is stored event by event and the events that
fail on their own are handed back (by index) for the dead-letter topic. The vocabulary's rules make this
rare; this is the net under them.
"""

from __future__ import annotations

import logging
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
        """Store validated rows; raises CircuitBreakerOpen or a connection error when the database is down."""
        if not rows:
            return StoreOutcome(0)
        try:
            inserted = await self.breaker.call(self._store, rows)
        except Exception as exc:
            if is_database_down(exc):
                raise
            log.warning("database refused a batch of %d events (%s); storing them one by one", len(rows), exc)
            return await self._one_by_one(rows)
        return StoreOutcome(inserted)

    async def _one_by_one(self, rows: Sequence[EventRow]) -> StoreOutcome:
        outcome = StoreOutcome(0)
        for index, row in enumerate(rows):
            try:
                outcome.inserted += await self.breaker.call(self._store, [row])
            except Exception as exc:
                if is_database_down(exc):
                    raise
                outcome.refused.append((index, f"{type(exc).__name__}: {exc}"))
        return outcome
