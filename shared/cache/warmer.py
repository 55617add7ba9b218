"""`IntelligentCacheWarmer`: prefill the most requested keys at start-up, from recorded usage.

The engine counts requests per key and remembers how each key was called (cache name and
arguments). The warmer flushes those counts to the shared tier (Redis sorted set, or the disk
tier when there is no Redis) every few seconds; at start-up it reads the top keys and calls
their functions again through the cache, so the first users after a restart or a deploy hit
a warm cache. Keys another process warmed already are cache hits, not computations.

Calls are recorded as JSON and their arguments validated against the functions' type hints
when read back (`call_specs.py`): the shared store is data, never code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shared.cache.call_specs import decode_call_spec, encode_call_spec
from shared.cache.manager import HierarchicalCacheManager
from shared.cache.tiers import TierUnavailable
from shared.resources import get_resource_guard

log = logging.getLogger(__name__)

__all__ = ["IntelligentCacheWarmer"]

# The shared usage record keeps the ARGV[1] most requested keys and their calls.
_TRIM_USAGE = """
local excess = redis.call('zcard', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local dropped = redis.call('zrange', KEYS[1], 0, excess - 1)
redis.call('zremrangebyrank', KEYS[1], 0, excess - 1)
for i = 1, #dropped, 500 do
  redis.call('hdel', KEYS[2], unpack(dropped, i, math.min(i + 499, #dropped)))
end
return excess
"""
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
        usage = self.manager.usage.drain()
        if not usage:
            return 0
        specs: dict[str, bytes] = {}
        for key, call in self.manager.call_specs.items():
            if key in usage and key not in self._flushed_specs:
                encoded = encode_call_spec(call)
                if encoded is not None:
                    specs[key] = encoded
        try:
            if self.manager.l2 is not None:
                client = self.manager.l2.client()
                async with client.pipeline(transaction=False) as pipe:
                    for key, n in usage.items():
                        pipe.zincrby(self.manager.l2.usage_key, n, key)
                    for key, spec in specs.items():
                        pipe.hset(self.manager.l2.calls_key, key, spec)
                    pipe.eval(
                        _TRIM_USAGE,
                        2,
                        self.manager.l2.usage_key,
                        self.manager.l2.calls_key,
                        self.manager.usage.max_keys,
                    )
                    await self.manager.l2.breaker.call(pipe.execute)
            elif self.manager.l3 is not None:
                cache = self.manager.l3.cache

                def write() -> None:
                    for key, n in usage.items():
                        cache.incr(_USAGE_PREFIX + key, n, default=0)
                    for key, spec in specs.items():
                        cache.set(_CALL_PREFIX + key, spec)

                await asyncio.to_thread(write)
            else:
                return 0
        except Exception as exc:  # usage is best effort: put the counts back for the next flush
            self.manager.usage.restore(usage.items())
            log.debug("usage flush failed: %s", exc)
            return 0
        self._flushed_specs.update(specs)
        if len(self._flushed_specs) > self.manager.call_specs.max_keys:
            self._flushed_specs.clear()  # bounded too; re-recording a spec costs one write
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
                spec = decode_call_spec(raw, self.functions) if raw is not None else None
                if spec is not None:
                    out.append((key.decode(), spec))
        elif self.manager.l3 is not None:
            l3 = self.manager.l3

            def read() -> list[tuple[str, Any]]:
                counts: list[tuple[str, int]] = []
                for k in l3.cache.iterkeys():
                    if isinstance(k, str) and k.startswith(_USAGE_PREFIX):
                        n = l3.get_raw(k)
                        if isinstance(n, int):
                            counts.append((k[len(_USAGE_PREFIX) :], n))
                counts.sort(key=lambda kv: -kv[1])
                found = []
                for key, _ in counts[: self.top_n]:
                    raw = l3.get_raw(_CALL_PREFIX + key)
                    spec = decode_call_spec(raw, self.functions) if isinstance(raw, bytes | str) else None
                    if spec is not None:
                        found.append((key, spec))
                return found

            try:
                out = await asyncio.to_thread(read)
            except Exception as exc:  # a broken disk tier: nothing to warm, never a failed start
                log.warning("could not read the warming record from disk: %s", exc)
                return []
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
