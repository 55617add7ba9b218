"""`IntelligentCacheWarmer`: prefill the most requested keys at start-up, from recorded usage.

The engine counts requests per key and remembers how each key was called (cache name and
arguments). The warmer flushes those counts to the shared tier (Redis sorted set, or the disk
tier when there is no Redis) every few seconds; at start-up it reads the top keys and calls
their functions again through the cache, so the first users after a restart or a deploy hit
a warm cache. Keys another process warmed already are cache hits, not computations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shared.cache.manager import HierarchicalCacheManager
from shared.cache.tiers import TierUnavailable
from shared.resources import get_resource_guard

log = logging.getLogger(__name__)

__all__ = ["IntelligentCacheWarmer"]

_USAGE_PREFIX = "usage:"
_CALL_PREFIX = "call:"


def _guard_throttled() -> bool:
    """By default warming waits while this process's resource guard holds background work."""
    guard = get_resource_guard()
    return guard is not None and guard.throttled


class IntelligentCacheWarmer:
    def __init__(
        self,
        manager: HierarchicalCacheManager,
        functions: Mapping[str, Callable[..., Awaitable[Any]]],
        *,
        top_n: int = 20,
        flush_interval_s: float = 5.0,
        should_pause: Callable[[], bool] | None = None,
    ) -> None:
        self.manager = manager
        self.functions = dict(functions)  # cache name → callable taking the recorded arguments
        self.top_n = top_n
        self.flush_interval_s = flush_interval_s
        self.should_pause = should_pause or _guard_throttled
        self.warmed: list[str] = []
        self._flushed_specs: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- recording ---------------------------------------------------------------------------
    async def flush(self) -> int:
        """Move the usage counted since the last flush to the shared store."""
        usage = dict(self.manager.usage)
        self.manager.usage.clear()
        specs = {
            k: s for k, s in self.manager.call_specs.items() if k not in self._flushed_specs and k in usage
        }
        if not usage:
            return 0
        try:
            if self.manager.l2 is not None:
                client = self.manager.l2.client()
                async with client.pipeline(transaction=False) as pipe:
                    for key, n in usage.items():
                        pipe.zincrby(self.manager.l2.usage_key, n, key)
                    for key, spec in specs.items():
                        pipe.hset(self.manager.l2.calls_key, key, pickle.dumps(spec))
                    await self.manager.l2.breaker.call(pipe.execute)
            elif self.manager.l3 is not None:
                cache = self.manager.l3.cache

                def write() -> None:
                    for key, n in usage.items():
                        cache.incr(_USAGE_PREFIX + key, n, default=0)
                    for key, spec in specs.items():
                        cache.set(_CALL_PREFIX + key, pickle.dumps(spec))

                await asyncio.to_thread(write)
            else:
                return 0
        except Exception as exc:  # usage is best effort: put the counts back for the next flush
            self.manager.usage.update(usage)
            log.debug("usage flush failed: %s", exc)
            return 0
        self._flushed_specs.update(specs)
        return len(usage)

    async def top_calls(self) -> list[tuple[str, tuple[str, tuple[Any, ...], dict[str, Any]]]]:
        """The most requested keys with their recorded calls, most requested first."""
        out: list[tuple[str, tuple[str, tuple[Any, ...], dict[str, Any]]]] = []
        if self.manager.l2 is not None:
            l2 = self.manager.l2
            try:
                keys = await l2._call("zrevrange", l2.usage_key, 0, self.top_n - 1)
                if not keys:
                    return []
                raw_specs = await l2._call("hmget", l2.calls_key, keys)
            except TierUnavailable:
                return []
            for key, raw in zip(keys, raw_specs, strict=True):
                if raw is not None:
                    out.append((key.decode(), pickle.loads(raw)))
        elif self.manager.l3 is not None:
            cache = self.manager.l3.cache

            def read() -> list[tuple[str, Any]]:
                counts = [
                    (k[len(_USAGE_PREFIX) :], cache.get(k))
                    for k in cache.iterkeys()
                    if isinstance(k, str) and k.startswith(_USAGE_PREFIX)
                ]
                counts.sort(key=lambda kv: -(kv[1] or 0))
                found = []
                for key, _ in counts[: self.top_n]:
                    raw = cache.get(_CALL_PREFIX + key)
                    if raw is not None:
                        found.append((key, pickle.loads(raw)))
                return found

            out = await asyncio.to_thread(read)
        return out

    # -- warming -----------------------------------------------------------------------------
    async def warm(self) -> list[str]:
        """Call the most requested keys' functions through the cache; returns the keys warmed."""
        warmed: list[str] = []
        for key, (name, args, kwargs) in await self.top_calls():
            fn = self.functions.get(name)
            if fn is None:
                continue
            await self._until_allowed()
            try:
                await fn(*args, **kwargs)
                warmed.append(key)
            except Exception as exc:
                log.warning("warming %s failed: %s", name, exc)
        self.warmed = warmed
        if warmed:
            log.info("cache warmer prefilled %d keys", len(warmed))
        return warmed

    async def _until_allowed(self) -> None:
        """Resource guards may pause background work such as warming; poll until allowed."""
        for _ in range(3600):
            if not self.should_pause():
                return
            await asyncio.sleep(1.0)

    async def start(self, *, warm: bool = True) -> None:
        """Warm in the background, then keep flushing usage."""

        async def run() -> None:
            if warm:
                await self.warm()
            while True:
                await asyncio.sleep(self.flush_interval_s)
                await self.flush()

        self._task = asyncio.create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.flush()
