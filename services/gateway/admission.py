"""How much memory ingestion may hold at once: a budget that requests reserve from before reading.

Parsing a JSON body costs a multiple of its size: orjson's parse buffers plus the Python objects
it builds. Measured peaks (tracemalloc, 4 MiB bodies, orjson 3.13, CPython 3.11): about 14x the
body for plain events, 17-20x with many small extra fields or numbers, and 33-36x in the worst
shapes (thousands of empty lists or objects). With the body itself and the Kafka messages held
until the broker acknowledges, a request costs at most `COST_PER_BODY_BYTE` times its body.

Each request reserves that much (from its Content-Length, or the maximum when it is not
declared) before its body is read, and waits (FIFO, bounded) while the budget is spent; so
concurrent maximum requests cannot add up past `INGEST_MEMORY_BUDGET_MB`, whatever their number.
Hand-written because asyncio has no weighted semaphore and the libraries that limit capacity
(anyio's CapacityLimiter, aiolimiter) take one token per holder, not a size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from prometheus_client import Gauge

COST_PER_BODY_BYTE = 40
# Headers, the request's own objects, the answer: a small request still costs something.
BASE_COST_BYTES = 64 * 1024

RESERVED = Gauge("gateway_ingest_memory_reserved_bytes", "memory reserved by ingest requests in progress")
WAITING = Gauge("gateway_ingest_requests_waiting", "ingest requests waiting for memory budget")


def request_cost(body_bytes: int) -> int:
    """Bytes one ingest request with a body of `body_bytes` may hold at its peak."""
    return BASE_COST_BYTES + COST_PER_BODY_BYTE * body_bytes


class BudgetExhausted(Exception):
    """No room in the budget within the wait allowed."""


class MemoryBudget:
    """Reservations of bytes, granted first come first served while they fit in `total`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def reserve(self, amount: int, timeout_s: float) -> AsyncIterator[None]:
        amount = min(amount, self.total)  # a request the budget cannot hold at all runs alone
        if not self._waiters and self.used + amount <= self.total:
            self._take(amount)
        else:
            await self._wait(amount, timeout_s)
        try:
            yield
        finally:
            self._give_back(amount)

    async def _wait(self, amount: int, timeout_s: float) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, granted)
        self._waiters.append(entry)
        WAITING.inc()
        try:
            await asyncio.wait_for(asyncio.shield(granted), timeout_s)
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._give_back(amount)  # granted just as the wait ended
            else:
                granted.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()  # a smaller request behind this one may fit now
            if isinstance(exc, TimeoutError):
                raise BudgetExhausted(f"no ingest memory budget within {timeout_s:g}s") from None
            raise
        finally:
            WAITING.dec()

    def _take(self, amount: int) -> None:
        self.used += amount
        RESERVED.set(self.used)

    def _give_back(self, amount: int) -> None:
        self.used -= amount
        RESERVED.set(self.used)
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            amount, granted = self._waiters[0]
            if granted.done():
                self._waiters.popleft()
                continue
            if self.used + amount > self.total:
                return
            self._waiters.popleft()
            self._take(amount)
            granted.set_result(None)
