"""Per API key (or client address) rate limits on ingestion, with the `limits` library.

Two independent budgets: requests (`INGEST_RATE_LIMIT`) and events (`INGEST_EVENTS_RATE_LIMIT`,
where a batch of N events costs N). The sliding-window-counter strategy costs O(1) memory per
key however large the budget, unlike the moving window which stores one entry per unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from shared.errors import ApiError


@dataclass(frozen=True)
class Quota:
    limit: int
    remaining: int
    reset_at: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


def _parse(spec: str | None, setting: str) -> list[RateLimitItem]:
    if not spec:
        return []
    try:
        return list(parse_many(spec))
    except ValueError as exc:
        raise ValueError(
            f"{setting}={spec!r} is not a rate limit such as '100/second;2000/minute': {exc}"
        ) from None


class IngestLimiter:
    def __init__(
        self,
        request_limits: str | None,
        event_limits: str | None,
        storage_uri: str = "memory://",
        redis_options: Callable[[bool], dict[str, Any]] | None = None,
    ) -> None:
        self.request_limits = _parse(request_limits, "INGEST_RATE_LIMIT")
        self.event_limits = _parse(event_limits, "INGEST_EVENTS_RATE_LIMIT")
        uri = storage_uri if storage_uri.startswith("async+") else "async+" + storage_uri
        options: dict[str, Any] = {}
        self._pool: redis.asyncio.ConnectionPool | None = None
        if uri.startswith(("async+redis://", "async+rediss://")):
            # Redis through redis-py, which the fleet already depends on (limits defaults to
            # coredis), with a pool of our own so shutdown can close it.
            # Password and TLS as for every Redis client of the fleet (CACHE_PASSWORD, CACHE_TLS...).
            extra = redis_options(uri.startswith("async+rediss://")) if redis_options else {}
            self._pool = redis.asyncio.ConnectionPool.from_url(
                uri.removeprefix("async+"), socket_timeout=2, **extra
            )
            options = {"implementation": "redispy", "connection_pool": self._pool}
        self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(uri, **options))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    @property
    def enabled(self) -> bool:
        return bool(self.request_limits or self.event_limits)

    async def hit_request(self, identity: str) -> Quota | None:
        return await self._hit(self.request_limits, identity, 1, "requests")

    async def hit_events(self, identity: str, count: int) -> Quota | None:
        return await self._hit(self.event_limits, identity, count, "events")

    async def _hit(self, items: list[RateLimitItem], identity: str, cost: int, unit: str) -> Quota | None:
        """Spend `cost` from every budget; 429 on the first exhausted one; else the tightest quota."""
        tightest: Quota | None = None
        for item in items:
            allowed = cost <= item.amount and await self._limiter.hit(item, unit, identity, cost=cost)
            stats = await self._limiter.get_window_stats(item, unit, identity)
            quota = Quota(item.amount, stats.remaining, stats.reset_time)
            if not allowed:
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                message = (
                    f"{cost} events exceed the limit of {item}"
                    if cost > item.amount
                    else f"rate limit of {item} {unit} exceeded; retry in {retry_after}s"
                )
                raise ApiError(
                    429,
                    message,
                    code="rate_limited",
                    details={"limit": str(item), "unit": unit, "retry_after": retry_after},
                    headers={"Retry-After": str(retry_after), **quota.headers()},
                )
            if tightest is None or quota.remaining < tightest.remaining:
                tightest = quota
        return tightest
