"""The processor's sink: one database round-trip per batch through the `database` breaker.

Only an unavailable database (`DATABASE_DOWN`) may hold a batch. A batch that fails for any
other reason (PostgreSQL refusing a value, a value the driver cannot encode) would block the
partition forever if retried as a whole, so it is stored event by event and the events that
fail on their own are handed back for the dead-letter topic. The vocabulary's rules make this
rare; this is the net under them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from shared.breaker import CircuitBreaker, CircuitBreakerOpen
from shared.event_store import store_events
from shared.events import AccessEvent

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
    stored: list[AccessEvent]
    refused: list[tuple[AccessEvent, str]] = field(default_factory=list)


class EventSink:
    def __init__(self, pool: asyncpg.Pool, breaker: CircuitBreaker) -> None:
        self.pool = pool
        self.breaker = breaker

    async def store(self, events: list[AccessEvent]) -> StoreOutcome:
        """Store `events`; raises CircuitBreakerOpen or a connection error when the database is down."""
        if not events:
            return StoreOutcome(0, [])
        try:
            inserted = await self.breaker.call(store_events, self.pool, events)
        except Exception as exc:
            if is_database_down(exc):
                raise
            log.warning(
                "database refused a batch of %d events (%s); storing them one by one", len(events), exc
            )
            return await self._one_by_one(events)
        return StoreOutcome(inserted, events)

    async def _one_by_one(self, events: list[AccessEvent]) -> StoreOutcome:
        outcome = StoreOutcome(0, [])
        for event in events:
            try:
                outcome.inserted += await self.breaker.call(store_events, self.pool, [event])
                outcome.stored.append(event)
            except Exception as exc:
                if is_database_down(exc):
                    raise
                outcome.refused.append((event, f"{type(exc).__name__}: {exc}"))
        return outcome
