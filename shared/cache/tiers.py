"""The three tiers: L1 in-process LRU with TTL, L2 Redis, L3 disk (diskcache).

Every tier stores `CacheEntry` objects and keeps entries until their `stale_until`, so an
expired value is still there as the stale-if-error fallback; freshness is judged by the
engine (`manager.py`), not by the tiers. A tier that cannot answer raises `TierUnavailable`
and the engine goes on with the other tiers: a broken Redis or disk never fails a request.

What the shared tiers read back is data, never code: entries are decoded by `entry.loads`
(JSON and Arrow, no pickle), and the disk tier's `diskcache` runs on `SafeDisk`, which stores
only bytes, text and numbers and refuses diskcache's pickled rows. Anything else found there
is a miss and is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os.path
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared.breaker import CircuitBreaker, CircuitBreakerOpen
from shared.cache.entry import CacheEntry, EntryDecodeError, EntryEncodeError, dumps, loads
from shared.cache.metrics import CACHE_TIER_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["DiskTier", "MemoryTier", "RedisTier", "SafeDisk", "TierStats", "TierUnavailable"]


class TierUnavailable(Exception):
    """The tier cannot answer now (down, breaker open); the engine uses the others."""


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    promotions: int = 0
    errors: int = 0


class MemoryTier:
    """L1: a bounded LRU with per-entry deadlines, shared by every thread of the process.

    Hand-written (an OrderedDict and a lock) rather than `cachetools.TLRUCache` because the
    engine needs eviction counts for its report, entries kept past freshness for
    stale-if-error, and purges by tag; wrapping cachetools for that is as long as this.
    """

    name = "l1"

    def __init__(self, max_entries: int, clock: Any = time.time) -> None:
        self.max_entries = max_entries
        self.stats = TierStats()
        self._data: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock

    def get_now(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if not entry.usable_stale(self._clock()):
                del self._data[key]
                self.stats.evictions += 1
                return None
            self._data.move_to_end(key)
            return entry

    def set_now(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._data[key] = entry
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self.stats.evictions += 1

    def resize(self, max_entries: int) -> None:
        with self._lock:
            self.max_entries = max_entries
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self.stats.evictions += 1

    def purge(self, predicate: Any) -> int:
        """Drop entries for which `predicate(key, entry)` is true (invalidated ones)."""
        with self._lock:
            doomed = [k for k, e in self._data.items() if predicate(k, e)]
            for key in doomed:
                del self._data[key]
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    async def get(self, key: str) -> CacheEntry | None:
        return self.get_now(key)

    async def set(self, key: str, entry: CacheEntry) -> None:
        self.set_now(key, entry)

    async def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    async def entries(self) -> int:
        with self._lock:
            return len(self._data)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)


# Atomic owner-checked lock operations: only the holder of the token may extend or release.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
    "else return 0 end"
)
# Invalidation times only move forward, whoever writes last. The set keeps the ARGV[3] most
# recent ones; what it drops raises the floor (KEYS[2]) to the latest time dropped, which
# every reader applies to all entries: bounded, and never less invalidation than asked for.
_RECORD_INVALIDATION = """
local cur = tonumber(redis.call('zscore', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('zadd', KEYS[1], ARGV[2], ARGV[1]) end
local excess = redis.call('zcard', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local dropped = redis.call('zrange', KEYS[1], excess - 1, excess - 1, 'WITHSCORES')
  local floor = tonumber(redis.call('get', KEYS[2]) or '0')
  if tonumber(dropped[2]) > floor then redis.call('set', KEYS[2], dropped[2]) end
  redis.call('zremrangebyrank', KEYS[1], 0, excess - 1)
end
return 1
"""


class RedisTier:
    """L2: Redis, shared by every process; also the home of the cross-process locks.

    redis-py's asyncio connections belong to the event loop that opened them, so the tier
    keeps one client per loop (the service loop, and the private loop that serves sync
    callers). Every call goes through the `redis` breaker with short socket timeouts: when
    Redis is down, calls fail fast, then are not even tried until the breaker half-opens.
    """

    name = "l2"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        breaker: CircuitBreaker,
        timeout_s: float = 0.5,
        connection_options: dict[str, Any] | None = None,
        max_invalidations: int = 10_000,
    ) -> None:
        self.url = url
        self.prefix = key_prefix
        self.breaker = breaker
        self.timeout_s = timeout_s
        # Password and TLS (`shared.redis_options.redis_connection_options`).
        self.connection_options = dict(connection_options or {})
        self.max_invalidations = max_invalidations
        self.stats = TierStats()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    # -- keys --------------------------------------------------------------------------------
    def entry_key(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"

    def lock_key(self, key: str) -> str:
        return f"{self.prefix}:lock:{key}"

    @property
    def invalidations_key(self) -> str:
        return f"{self.prefix}:invalidations:z"

    @property
    def invalidations_floor_key(self) -> str:
        return f"{self.prefix}:invalidations:floor"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:invalidate"

    @property
    def usage_key(self) -> str:
        return f"{self.prefix}:usage"

    @property
    def calls_key(self) -> str:
        return f"{self.prefix}:calls"

    # -- client ------------------------------------------------------------------------------
    def client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
                **self.connection_options,
            )
            self._clients[loop] = client
        return client

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.client(), method)
        try:
            return await self.breaker.call(fn, *args, **kwargs)
        except CircuitBreakerOpen as exc:
            raise TierUnavailable(f"redis breaker open, retry in {exc.retry_after:.1f}s") from None
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self.stats.errors += 1
            CACHE_TIER_ERRORS.labels(tier=self.name).inc()
            raise TierUnavailable(f"redis: {type(exc).__name__}: {exc}") from None

    # -- entries -----------------------------------------------------------------------------
    async def get(self, key: str) -> CacheEntry | None:
        raw = await self._call("get", self.entry_key(key))
        if raw is None:
            return None
        try:
            return loads(raw)
        except EntryDecodeError as exc:  # another format (an old pickle, or planted): a miss, and gone
            log.warning("refused a redis cache entry %s: %s", key, exc)
            await self.delete(key)
            return None

    async def set(self, key: str, entry: CacheEntry) -> None:
        ttl_ms = max(1, int((entry.stale_until - time.time()) * 1000))
        try:
            data = dumps(entry)
        except EntryEncodeError as exc:
            log.debug("not shared through redis: %s", exc)
            return
        await self._call("set", self.entry_key(key), data, px=ttl_ms)

    async def delete(self, key: str) -> None:
        await self._call("delete", self.entry_key(key))

    async def entries(self) -> int:
        count = 0
        cursor: int = 0
        while True:
            cursor, keys = await self._call("scan", cursor, match=f"{self.prefix}:cache:*", count=1000)
            count += len(keys)
            if not cursor:
                return count

    # -- locks -------------------------------------------------------------------------------
    async def try_lock(self, key: str, ttl_s: float) -> str | None:
        token = uuid.uuid4().hex
        ok = await self._call("set", self.lock_key(key), token, nx=True, px=max(1, int(ttl_s * 1000)))
        return token if ok else None

    async def extend_lock(self, key: str, token: str, ttl_s: float) -> bool:
        return bool(
            await self._call("eval", _EXTEND, 1, self.lock_key(key), token, max(1, int(ttl_s * 1000)))
        )

    async def release_lock(self, key: str, token: str) -> None:
        await self._call("eval", _RELEASE, 1, self.lock_key(key), token)

    # -- invalidations and usage ---------------------------------------------------------------
    async def record_invalidation(self, field: str, at: float, message: bytes) -> None:
        await self._call(
            "eval",
            _RECORD_INVALIDATION,
            2,
            self.invalidations_key,
            self.invalidations_floor_key,
            field,
            repr(at),
            self.max_invalidations,
        )
        await self._call("publish", self.channel, message)

    async def load_invalidations(self) -> tuple[dict[str, float], float]:
        """The latest time of each remembered invalidation, and the floor (see InvalidationLog)."""
        raw: list[tuple[bytes, float]] = await self._call(
            "zrange", self.invalidations_key, 0, -1, withscores=True
        )
        floor = await self._call("get", self.invalidations_floor_key)
        return {k.decode(): float(v) for k, v in raw}, float(floor or 0.0)

    async def ping(self) -> None:
        await self._call("ping")

    async def close(self) -> None:
        for client in list(self._clients.values()):
            # a client of another (stopped) loop cannot be closed from here: nothing to do
            # Bounded: a pub/sub reader stuck on a dead socket can hold the pool's lock, and
            # shutting down must never hang on it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), timeout=2)
        self._clients.clear()


class RefusedValue(ValueError):
    """A diskcache row in a form SafeDisk does not read (pickle, or a file outside the cache)."""


class SafeDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's serialiser without pickle.

    `diskcache.Disk` pickles every key and value that is not bytes, str, int or float, and
    unpickles whatever a row says is pickled: anyone able to write the cache directory would
    run code in every process reading it. Here keys must be strings, values bytes, text or
    numbers, and pickled rows and files outside the cache directory are refused.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str):
            raise TypeError(f"disk cache keys are strings, not {type(key).__name__}")
        return super().put(key)  # type: ignore[no-any-return]

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise RefusedValue("a pickled disk cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not read and not isinstance(value, bytes | str | int | float):
            raise TypeError(f"disk cache values are bytes, text or numbers, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise RefusedValue("a pickled disk cache value")
        if filename is not None and (os.path.isabs(filename) or ".." in filename.split("/")):
            raise RefusedValue("a disk cache file outside the cache directory")
        return super().fetch(mode, filename, value, read)


class DiskTier:
    """L3: a disk cache on `diskcache` (SQLite index plus files), shared by the processes of
    one host and surviving restarts. Its calls are blocking, so they run in threads."""

    name = "l3"

    def __init__(self, directory: Path, *, size_limit_bytes: int = 1 << 30, max_ttl_s: float = 3600) -> None:
        self.directory = directory
        self.max_ttl_s = max_ttl_s
        self.stats = TierStats()
        directory.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit_bytes,
            eviction_policy="least-recently-used",
            timeout=2,
            disk=SafeDisk,
        )

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except (OSError, diskcache.Timeout, Exception) as exc:
            self.stats.errors += 1
            CACHE_TIER_ERRORS.labels(tier=self.name).inc()
            raise TierUnavailable(f"disk cache: {type(exc).__name__}: {exc}") from None

    def get_raw(self, key: str) -> Any:
        """The stored bytes or number, or None when absent or refused (the row is then deleted)."""
        try:
            return self.cache.get(key)
        except RefusedValue as exc:
            log.warning("refused a disk cache row %s: %s", key, exc)
            self.cache.delete(key)
            return None

    async def get(self, key: str) -> CacheEntry | None:
        raw = await self._run(self.get_raw, key)
        if raw is None:
            return None
        try:
            return loads(raw)
        except EntryDecodeError as exc:
            log.warning("refused a disk cache entry %s: %s", key, exc)
            await self.delete(key)
            return None

    def _set(self, key: str, entry: CacheEntry) -> None:
        expire = min(self.max_ttl_s, max(0.001, entry.stale_until - time.time()))
        try:
            data = dumps(entry)
        except EntryEncodeError as exc:
            log.debug("not stored on disk: %s", exc)
            return
        before = len(self.cache)
        existed = key in self.cache
        self.cache.set(key, data, expire=expire)
        culled = before + (0 if existed else 1) - len(self.cache)
        if culled > 0:  # diskcache culled least-recently-used entries to stay under its size limit
            self.stats.evictions += culled

    async def set(self, key: str, entry: CacheEntry) -> None:
        await self._run(self._set, key, entry)

    async def delete(self, key: str) -> None:
        await self._run(self.cache.delete, key)

    def _expire(self) -> int:
        removed = int(self.cache.expire())
        self.stats.evictions += removed
        return removed

    async def entries(self) -> int:
        await self._run(self._expire)
        return int(await self._run(len, self.cache))

    def close(self) -> None:
        self.cache.close()
