"""New events invalidate the analyses they can change: PostgreSQL tells, analytics listens.

The primary database's trigger (migrations 0003 and 0005) sends one notification per stored batch on
`access_events_written`, with the facilities in it. This listener turns that into cache tags:
`facility:<f>` for each facility plus `facility:*` (analyses without a facility filter);
when the list is absent (very many, or too long for a notification) the whole `events` tag. Whoever wrote the
events (processor, uploads, a manual INSERT) needs no knowledge of the cache, and every
analytics process hears it independently.

A notification sent while the listener was disconnected is lost, so after every (re)connect
the `events` tag is invalidated once: conservative, never stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import orjson

from shared.cache import HierarchicalCacheManager
from shared.db import CONNECT_TIMEOUT_S

log = logging.getLogger(__name__)

CHANNEL = "access_events_written"
ALL_EVENTS_TAG = "events"


def filter_tags(facility_id: str | None) -> tuple[str, ...]:
    """The tags of an analysis computed with this facility filter."""
    return (ALL_EVENTS_TAG, f"facility:{facility_id or '*'}")


def tags_for_notification(payload: str) -> list[str]:
    try:
        data: Any = orjson.loads(payload)
        facilities = data.get("facilities")
    except (orjson.JSONDecodeError, AttributeError):
        return [ALL_EVENTS_TAG]
    if not isinstance(facilities, list):
        return [ALL_EVENTS_TAG]
    return ["facility:*", *(f"facility:{f}" for f in facilities if isinstance(f, str))]


class EventsListener:
    def __init__(
        self, dsn: str, manager: HierarchicalCacheManager, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.dsn = dsn
        self.manager = manager
        self.connect_timeout_s = connect_timeout_s
        self.notifications = 0
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.notifications += 1
        task = asyncio.ensure_future(self.manager.invalidate_tags(tags_for_notification(str(payload))))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(self) -> None:
        delay = 0.5
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                if not first:
                    await self.manager.invalidate_tags([ALL_EVENTS_TAG])
                first = False
                delay = 0.5
                self.connected.set()
                while not lost.is_set():
                    # A dead server without a FIN: probe now and then.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=15)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event notifications lost (%s); reconnecting in %.1fs", exc, delay)
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            first = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
