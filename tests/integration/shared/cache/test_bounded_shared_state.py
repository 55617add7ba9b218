"""What the fleet keeps in Redis stays bounded whatever the number of distinct queries or
facilities: the warmer's usage record and the shared invalidations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.breaker import CircuitBreaker
from shared.cache import IntelligentCacheWarmer, RedisCacheManager, RedisTier

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def tier(redis_url: str, prefix: str) -> RedisTier:
    return RedisTier(redis_url, key_prefix=prefix, breaker=CircuitBreaker("redis"))


async def test_the_shared_usage_record_keeps_the_most_requested_keys_only(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    l2 = tier(redis_url, redis_prefix)
    manager = RedisCacheManager(l2=l2, max_tracked_keys=20)

    async def compute() -> int:
        return 1

    warmer = IntelligentCacheWarmer(manager, {})
    for round_ in range(5):
        for i in range(30):
            key = f"q:{round_}:{i}"
            for _ in range(1 + (i % 3)):
                await manager.get_or_compute("q", key, compute, ttl_s=60, call_spec=("q", (), {"i": i}))
        assert await warmer.flush() == 20  # the bounded in-process counts
    assert await redis_client.zcard(l2.usage_key) == 20
    assert await redis_client.hlen(l2.calls_key) <= 20
    await manager.close()


async def test_shared_invalidations_stay_bounded_in_redis(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    l2 = RedisTier(redis_url, key_prefix=redis_prefix, breaker=CircuitBreaker("redis"), max_invalidations=50)
    writer = RedisCacheManager(l2=l2)
    for i in range(0, 500, 25):
        await writer.invalidate_tags([f"facility:f{j}" for j in range(i, i + 25)])
    assert await redis_client.zcard(l2.invalidations_key) == 50
    floor = float(await redis_client.get(l2.invalidations_floor_key))
    reader = RedisCacheManager(l2=tier(redis_url, redis_prefix))
    await reader.start()
    assert reader.invalidations.floor == floor
    assert "facility:f499" in reader.invalidations.snapshot()["tags"]
    await writer.close()
    await reader.close()
