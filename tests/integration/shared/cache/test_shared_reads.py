"""A burst on one cold key reads Redis once per process, not once per request."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from shared.breaker import CircuitBreaker
from shared.cache import RedisCacheManager, RedisTier
from tools.dev.servers import start_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_burst_on_a_cold_key_shares_one_redis_read() -> None:
    process, url = start_redis_server()  # private: its command counts are ours alone
    try:
        manager = RedisCacheManager(l2=RedisTier(url, key_prefix="burst", breaker=CircuitBreaker("redis")))
        calls = 0

        async def compute() -> int:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.2)
            return 42

        results = await asyncio.gather(
            *(manager.get_or_compute("burst", "burst:k", compute, ttl_s=60) for _ in range(300))
        )
        assert calls == 1
        assert {r.value for r in results} == {42}
        admin = aioredis.Redis.from_url(url)
        stats = await admin.info("commandstats")
        clients = await admin.info("stats")
        await admin.aclose()
        # One shared read before the flight, one by the lock holder: not 300.
        assert stats["cmdstat_get"]["calls"] <= 3
        assert clients["total_connections_received"] <= 5
        assert manager.l2 is not None
        assert manager.l2.stats.errors == 0
        await manager.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
