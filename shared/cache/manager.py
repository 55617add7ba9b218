"""The cache engine: tiers, single flight, early refresh, stale-if-error, invalidation.

One engine, configured by which tiers it has:
- `MemoryCacheManager`: L1 only (`CACHE_TYPE=memory`);
- `RedisCacheManager`: L1 + L2 (`CACHE_TYPE=redis`);
- `IntelligentMultiLevelCache`: L1 + L2 + L3, usage recording and the start-up warmer
  (`CACHE_TYPE=intelligent`);
all of them `HierarchicalCacheManager`s. `get_cache_manager()` builds the one the settings ask for.

A read looks in L1, L2, L3 in order; a fresh, valid hit in a lower tier is copied (promoted)
into the tiers above. On a miss, ONE caller computes: in-process callers of the same key
share one future, and across processes the computing one holds a Redis lock (owner token,
expiry, extended while it computes, so a crashed owner blocks others for one lock TTL at most)
while the others poll L2 for its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared.breaker import get_breaker_registry
from shared.cache import metrics
from shared.cache.bounded import BoundedCounts, BoundedMap
from shared.cache.entry import CacheEntry
from shared.cache.invalidation import InvalidationLog
from shared.cache.tiers import DiskTier, MemoryTier, RedisTier, TierUnavailable
from shared.cache.xfetch import should_refresh_early
from shared.performance.operation import operation
from shared.redis_options import cache_redis_url, redis_connection_options

log = logging.getLogger(__name__)

__all__ = [
    "CacheResult",
    "HierarchicalCacheManager",
    "IntelligentMultiLevelCache",
    "MemoryCacheManager",
    "RedisCacheManager",
    "get_cache_manager",
    "set_cache_manager",
]

Tier = MemoryTier | RedisTier | DiskTier
# (cache name, positional arguments, keyword arguments) of a call, for the warmer.
CallSpec = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass
class CacheResult:
    value: Any
    status: str  # "hit", "miss" (computed here), "shared" (computed by another caller), "stale"
    tier: str | None = None
    age_s: float = 0.0
    error: str | None = None


@dataclass
class _CacheStats:
    hits: Counter[str] = field(default_factory=Counter)
    misses: Counter[str] = field(default_factory=Counter)
    computations: int = 0
    stale_served: int = 0
    early_refreshes: int = 0
    errors: int = 0


class HierarchicalCacheManager:
    def __init__(
        self,
        *,
        l1_size: int = 1024,
        l2: RedisTier | None = None,
        l3: DiskTier | None = None,
        beta: float = 1.0,
        stale_ttl_s: float = 3600.0,
        lock_ttl_s: float = 10.0,
        lock_wait_s: float = 120.0,
        poll_interval_s: float = 0.02,
        invalidation_skew_s: float = 0.0,
        max_tracked_keys: int = 10_000,
        max_invalidations: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.l1 = MemoryTier(l1_size, clock)
        self.l2 = l2
        self.l3 = l3
        self.beta = beta
        self.stale_ttl_s = stale_ttl_s
        self.lock_ttl_s = lock_ttl_s
        self.lock_wait_s = lock_wait_s
        self.poll_interval_s = poll_interval_s
        self.invalidations = InvalidationLog(invalidation_skew_s, max_fields=max_invalidations)
        self.ttl_overrides: dict[str, float] = {}
        self.default_ttls: dict[str, float] = {}
        # Requests per key and how each key was called, for the warmer: bounded, because
        # every distinct query of a client is a new key.
        self.usage = BoundedCounts(max_tracked_keys)
        self.call_specs: BoundedMap[CallSpec] = BoundedMap(max_tracked_keys)
        self._clock = clock
        self._stats: dict[str, _CacheStats] = {}
        self._flights: dict[str, concurrent.futures.Future[CacheResult]] = {}
        self._flights_lock = threading.Lock()
        self._reads: dict[tuple[int, str, str], asyncio.Future[CacheEntry | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_lock = threading.Lock()
        self._started = False
        self._closing = False

    # -- configuration -----------------------------------------------------------------------
    @property
    def tiers(self) -> list[Tier]:
        return [t for t in (self.l1, self.l2, self.l3) if t is not None]

    def ttl_for(self, name: str, default: float) -> float:
        self.default_ttls.setdefault(name, default)
        return self.ttl_overrides.get(name, default)

    def set_ttl(self, name: str, seconds: float) -> None:
        """Change a cache's TTL live (the tuning API); applies to values stored from now on."""
        self.ttl_overrides[name] = seconds

    def _cache_stats(self, name: str) -> _CacheStats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = _CacheStats()
            self.register(name)
        return stats

    def register(self, name: str) -> None:
        """Export the cache's hit and miss counters at 0 for every tier before its first lookup.

        A labelled counter otherwise appears only at its first increment, and PromQL's rate()
        and increase() lose a series' first increment: a cache whose hits all landed between
        two scrapes would read as a 0 % hit ratio.
        """
        for tier in self.tiers:
            metrics.CACHE_HITS.labels(cache=name, tier=tier.name)
            metrics.CACHE_MISSES.labels(cache=name, tier=tier.name)
        metrics.CACHE_COMPUTATIONS.labels(cache=name)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to the shared tiers and follow other processes' invalidations."""
        if self._started:
            return
        self._started = True
        self._closing = False
        if self.l2 is not None:
            await self._load_invalidations()
            self._spawn(self._follow_invalidations())

    async def close(self) -> None:
        self._closing = True
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            # redis-py's get_message() can swallow a cancellation; the loops also watch
            # `_closing`, and close() never waits for them longer than this.
            await asyncio.wait(tasks, timeout=3)
        if self._sync_loop is not None:
            loop = self._sync_loop
            if self.l2 is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self.l2.close(), loop).result(timeout=2)
            loop.call_soon_threadsafe(loop.stop)
            self._sync_loop = None
        if self.l2 is not None:
            await self.l2.close()
        if self.l3 is not None:
            self.l3.close()
        self._started = False

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- reads -------------------------------------------------------------------------------
    def _usable(self, key: str, entry: CacheEntry, now: float) -> bool:
        return entry.fresh(now) and self.invalidations.valid(key, entry)

    async def get_or_compute(
        self,
        name: str,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        *,
        ttl_s: float,
        tags: tuple[str, ...] = (),
        call_spec: CallSpec | None = None,
    ) -> CacheResult:
        """The value of `key`: from the first tier that has it fresh, else computed once."""
        stats = self._cache_stats(name)
        self.usage.add(key)
        if call_spec is not None:
            self.call_specs.setdefault(key, call_spec)
        now = self._clock()
        stale: CacheEntry | None = None
        upper: list[Tier] = []
        for tier in self.tiers:
            try:
                entry = (
                    tier.get_now(key) if isinstance(tier, MemoryTier) else await self._shared_read(tier, key)
                )
            except TierUnavailable:
                continue
            if entry is not None and self._usable(key, entry, now):
                tier.stats.hits += 1
                stats.hits[tier.name] += 1
                metrics.CACHE_HITS.labels(cache=name, tier=tier.name).inc()
                for above in upper:
                    await self._store_in(above, key, entry, promoted=True)
                self._maybe_refresh_early(name, key, entry, compute, ttl_s, tags, now)
                return CacheResult(entry.value, "hit", tier.name, now - (entry.started_at + entry.delta))
            if (
                entry is not None
                and entry.usable_stale(now)
                and (stale is None or entry.started_at > stale.started_at)
            ):
                stale = entry
            tier.stats.misses += 1
            stats.misses[tier.name] += 1
            metrics.CACHE_MISSES.labels(cache=name, tier=tier.name).inc()
            upper.append(tier)
        return await self._single_flight(name, key, compute, ttl_s, tags, stale)

    async def _shared_read(self, tier: RedisTier | DiskTier, key: str) -> CacheEntry | None:
        """Read `key` from a shared tier once for all concurrent callers in this loop.

        Without it, N requests for a cold key make N Redis reads (and open up to N connections)
        before the single flight joins them; a burst on one key then times out Redis
        connections and opens the `redis` breaker for every key.
        """
        slot = (id(asyncio.get_running_loop()), tier.name, key)
        read = self._reads.get(slot)
        if read is None:
            read = asyncio.ensure_future(tier.get(key))
            self._reads[slot] = read

            def done(finished: asyncio.Future[CacheEntry | None]) -> None:
                self._reads.pop(slot, None)
                if not finished.cancelled():
                    finished.exception()  # retrieved here too: every waiter may have gone away

            read.add_done_callback(done)
        return await asyncio.shield(read)

    async def _store_in(self, tier: Tier, key: str, entry: CacheEntry, *, promoted: bool = False) -> None:
        try:
            await tier.set(key, entry)
        except TierUnavailable:
            return
        if promoted:
            tier.stats.promotions += 1

    def _maybe_refresh_early(
        self,
        name: str,
        key: str,
        entry: CacheEntry,
        compute: Callable[[], Awaitable[Any]],
        ttl_s: float,
        tags: tuple[str, ...],
        now: float,
    ) -> None:
        if key in self._flights or not should_refresh_early(now, entry.delta, entry.expires_at, self.beta):
            return
        self._cache_stats(name).early_refreshes += 1
        metrics.CACHE_EARLY_REFRESHES.labels(cache=name).inc()
        task = self._spawn(self._single_flight(name, key, compute, ttl_s, tags, entry))
        # A failed early refresh changes nothing: the current value stays until it expires.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # -- single flight -----------------------------------------------------------------------
    async def _single_flight(
        self,
        name: str,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        ttl_s: float,
        tags: tuple[str, ...],
        stale: CacheEntry | None,
    ) -> CacheResult:
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = concurrent.futures.Future()
        if leader:
            # The computation runs in its own task: a leader whose client goes away must not
            # cancel the work the followers are waiting for.
            task = asyncio.ensure_future(self._lead(name, key, compute, ttl_s, tags, stale))

            def finish(
                t: asyncio.Task[CacheResult], fut: concurrent.futures.Future[CacheResult] = flight
            ) -> None:
                with self._flights_lock:
                    self._flights.pop(key, None)
                if t.cancelled():
                    fut.set_exception(asyncio.CancelledError())
                elif t.exception() is not None:
                    fut.set_exception(t.exception())
                else:
                    fut.set_result(t.result())

            task.add_done_callback(finish)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        result = await asyncio.shield(asyncio.wrap_future(flight))
        if not leader and result.status == "miss":
            return CacheResult(result.value, "shared", result.tier, result.age_s)
        return result

    def _newer(self, entry: CacheEntry | None, than: CacheEntry | None, key: str) -> bool:
        return (
            entry is not None
            and self._usable(key, entry, self._clock())
            and (than is None or entry.started_at > than.started_at)
        )

    async def _lead(
        self,
        name: str,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        ttl_s: float,
        tags: tuple[str, ...],
        stale: CacheEntry | None,
    ) -> CacheResult:
        token: str | None = None
        if self.l2 is not None:
            deadline = time.monotonic() + self.lock_wait_s
            while True:
                try:
                    token = await self.l2.try_lock(key, self.lock_ttl_s)
                    if token is None or stale is None or not stale.fresh(self._clock()):
                        entry = await self.l2.get(key)
                        if self._newer(entry, stale, key):
                            assert entry is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
                            if token is not None:
                                await self.l2.release_lock(key, token)
                            return await self._found_in_l2(name, key, entry)
                except TierUnavailable:
                    token = None
                    break
                if token is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(self.poll_interval_s)
        try:
            return await self._compute(name, key, compute, ttl_s, tags, stale, token)
        finally:
            if token is not None and self.l2 is not None:
                with contextlib.suppress(TierUnavailable):
                    await self.l2.release_lock(key, token)

    async def _found_in_l2(self, name: str, key: str, entry: CacheEntry) -> CacheResult:
        """Another process computed it while we waited: count an L2 hit, promote to L1 (and L3)."""
        assert self.l2 is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        self.l2.stats.hits += 1
        self._cache_stats(name).hits["l2"] += 1
        metrics.CACHE_HITS.labels(cache=name, tier="l2").inc()
        await self._store_in(self.l1, key, entry, promoted=True)
        if self.l3 is not None:
            await self._store_in(self.l3, key, entry, promoted=True)
        return CacheResult(entry.value, "shared", "l2", self._clock() - (entry.started_at + entry.delta))

    async def _keep_lock(self, key: str, token: str) -> None:
        assert self.l2 is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            with contextlib.suppress(TierUnavailable):
                if not await self.l2.extend_lock(key, token, self.lock_ttl_s):
                    return

    async def _compute(
        self,
        name: str,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        ttl_s: float,
        tags: tuple[str, ...],
        stale: CacheEntry | None,
        token: str | None,
    ) -> CacheResult:
        stats = self._cache_stats(name)
        keeper = self._spawn(self._keep_lock(key, token)) if token is not None else None
        started = self._clock()
        t0 = time.perf_counter()
        try:
            stats.computations += 1
            metrics.CACHE_COMPUTATIONS.labels(cache=name).inc()
            with operation(f"cache.compute.{name}"):
                value = await compute()
        except Exception as exc:
            stats.errors += 1
            if stale is not None and stale.usable_stale(self._clock()):
                stats.stale_served += 1
                metrics.CACHE_STALE_SERVED.labels(cache=name).inc()
                log.warning("serving stale %s after the recomputation failed: %s", name, exc)
                age = self._clock() - (stale.started_at + stale.delta)
                return CacheResult(stale.value, "stale", None, age, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if keeper is not None:
                keeper.cancel()
        delta = time.perf_counter() - t0
        now = self._clock()
        entry = CacheEntry(
            value=value,
            name=name,
            started_at=started,
            delta=delta,
            expires_at=now + ttl_s,
            stale_until=now + ttl_s + self.stale_ttl_s,
            tags=tags,
        )
        for tier in self.tiers:
            await self._store_in(tier, key, entry)
        return CacheResult(value, "miss", None, 0.0)

    # -- sync callers ------------------------------------------------------------------------
    def run_sync(self, coro_factory: Callable[[], Awaitable[CacheResult]]) -> CacheResult:
        """Run an engine call for a synchronous caller, inside or outside a running loop.

        The call runs on the engine's private loop thread, so a sync function decorated with
        `cache_with_lock` works the same from plain code and from inside async code (where it
        blocks its caller, as any sync call does, but never deadlocks the caller's loop).
        """
        with self._sync_lock:
            if self._sync_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="cache-sync", daemon=True).start()
                self._sync_loop = loop
            loop = self._sync_loop

        async def run() -> CacheResult:
            return await coro_factory()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    # -- invalidation ------------------------------------------------------------------------
    async def invalidate_tags(
        self, tags: list[str] | tuple[str, ...] | set[str], *, broadcast: bool = True
    ) -> None:
        await self._invalidate([f"tag:{t}" for t in tags], broadcast)

    async def invalidate_prefix(self, prefix: str, *, broadcast: bool = True) -> None:
        await self._invalidate([f"prefix:{prefix}"], broadcast)

    async def _invalidate(self, fields: list[str], broadcast: bool) -> None:
        at = self._clock()
        for f in fields:
            if self.invalidations.record(f, at):
                metrics.CACHE_INVALIDATIONS.labels(kind=f.partition(":")[0]).inc()
        self.l1.purge(lambda k, e: not self.invalidations.valid(k, e))
        if broadcast and self.l2 is not None:
            message = orjson.dumps({"fields": fields, "at": at})
            for f in fields:
                try:
                    await self.l2.record_invalidation(f, at, message)
                except TierUnavailable:
                    log.warning("invalidation %s not shared: Redis unavailable", f)

    async def _load_invalidations(self) -> None:
        assert self.l2 is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        try:
            fields, floor = await self.l2.load_invalidations()
            self.invalidations.raise_floor(floor)
            self.invalidations.record_many(fields.items())
        except TierUnavailable as exc:
            log.warning("could not load shared invalidations: %s", exc)

    async def _follow_invalidations(self) -> None:
        """Apply other processes' invalidations as they are published; after a reconnect,
        reload the hash, which holds every invalidation missed meanwhile."""
        assert self.l2 is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        delay = 0.5
        while not self._closing:
            try:
                pubsub = self.l2.client().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.l2.channel)
                await self._load_invalidations()
                delay = 0.5
                try:
                    while not self._closing:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        data = orjson.loads(message["data"])
                        for f in data["fields"]:
                            self.invalidations.record(f, float(data["at"]))
                        self.l1.purge(lambda k, e: not self.invalidations.valid(k, e))
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("invalidation channel lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- report ------------------------------------------------------------------------------
    async def report(self) -> dict[str, Any]:
        """Per tier: entries, hits, misses, evictions, promotions; per cache: hits, computations."""
        tiers: dict[str, Any] = {}
        for tier in self.tiers:
            try:
                entries: int | None = await tier.entries()
                available = True
            except TierUnavailable:
                entries, available = None, False
            s = tier.stats
            tiers[tier.name] = {
                "entries": entries,
                "hits": s.hits,
                "misses": s.misses,
                "evictions": s.evictions,
                "promotions": s.promotions,
                "errors": s.errors,
                "available": available,
            }
            if tier is self.l1:
                tiers[tier.name]["max_entries"] = self.l1.max_entries
        caches = {
            name: {
                "hits": dict(s.hits),
                "misses": dict(s.misses),
                "computations": s.computations,
                "stale_served": s.stale_served,
                "early_refreshes": s.early_refreshes,
                "errors": s.errors,
                "ttl_seconds": self.ttl_overrides.get(name, self.default_ttls.get(name)),
            }
            for name, s in sorted(self._stats.items())
        }
        return {
            "type": type(self).__name__,
            "tiers": tiers,
            "caches": caches,
            "invalidations": self.invalidations.summary(),
        }


class MemoryCacheManager(HierarchicalCacheManager):
    """`CACHE_TYPE=memory`: the in-process tier only."""

    def __init__(self, *, l1_size: int = 1024, l3: DiskTier | None = None, **kwargs: Any) -> None:
        super().__init__(l1_size=l1_size, l2=None, l3=l3, **kwargs)


class RedisCacheManager(HierarchicalCacheManager):
    """`CACHE_TYPE=redis`: L1 in front of the shared Redis tier."""

    def __init__(self, *, l2: RedisTier, l1_size: int = 1024, **kwargs: Any) -> None:
        super().__init__(l1_size=l1_size, l2=l2, **kwargs)


class IntelligentMultiLevelCache(HierarchicalCacheManager):
    """`CACHE_TYPE=intelligent`: L1 + L2 + L3, recording usage for the start-up warmer."""

    def __init__(
        self, *, l2: RedisTier | None, l3: DiskTier | None, l1_size: int = 1024, **kwargs: Any
    ) -> None:
        super().__init__(l1_size=l1_size, l2=l2, l3=l3, **kwargs)


def build_cache_manager(settings: Any) -> HierarchicalCacheManager:
    """The manager `settings.cache_type` asks for (FleetSettings or a subclass)."""
    breaker = get_breaker_registry(settings.circuit_breaker_config).get("redis")
    url = cache_redis_url(settings)
    l3_path: Path | None = settings.cache_l3_path
    l3 = DiskTier(Path(l3_path), max_ttl_s=settings.cache_l3_ttl) if l3_path else None
    common = {"l1_size": settings.cache_l1_size}
    if settings.cache_type == "memory":
        return MemoryCacheManager(l3=l3, **common)
    l2 = RedisTier(
        url,
        key_prefix=settings.cache_key_prefix,
        breaker=breaker,
        connection_options=redis_connection_options(settings),
    )
    if settings.cache_type == "redis":
        return RedisCacheManager(l2=l2, **common)
    return IntelligentMultiLevelCache(l2=l2, l3=l3, **common)


_manager: HierarchicalCacheManager | None = None
_manager_lock = threading.Lock()


def get_cache_manager(settings: Any = None) -> HierarchicalCacheManager:
    """The process-wide manager: the one a service installed with `set_cache_manager`, else one
    built from the fleet settings (`CACHE_TYPE`) on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            if settings is None:
                from shared.settings import get_fleet_settings

                settings = get_fleet_settings()
            _manager = build_cache_manager(settings)
        return _manager


def set_cache_manager(manager: HierarchicalCacheManager | None) -> None:
    global _manager
    with _manager_lock:
        _manager = manager
