"""The processor's sink: one database round-trip per batch through the `database` breaker.

A batch that PostgreSQL refuses for its content (a NUL byte in a text field, a value out of
range) would block the partition forever if retried as a whole, so it is stored event by
event and the rows the database refuses are handed back for the dead-letter topic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from shared.breaker import CircuitBreaker
from shared.event_store import store_events
from shared.events import AccessEvent

log = logging.getLogger(__name__)

# SQLSTATE classes that blame the data, not the server: 22 data exception, 23 integrity
# constraint violation, 54 program limit exceeded (e.g. a row too large).
_CONTENT_ERROR_CLASSES = ("22", "23", "54")


def is_content_error(exc: BaseException) -> bool:
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, asyncpg.PostgresError) and sqlstate.startswith(_CONTENT_ERROR_CLASSES)


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
        except asyncpg.PostgresError as exc:
            if not is_content_error(exc):
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
            except asyncpg.PostgresError as exc:
                if not is_content_error(exc):
                    raise
                outcome.refused.append((event, f"{type(exc).__name__}: {exc}"))
        return outcome
