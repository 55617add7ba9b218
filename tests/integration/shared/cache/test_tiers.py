"""The engine with real Redis and disk tiers: cross-instance single flight, promotion, the
warmer, a crashed lock owner, and Redis failing and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.breaker import BreakerConfig, CircuitBreaker
from shared.cache import (
    DiskTier,
    HierarchicalCacheManager,
    IntelligentCacheWarmer,
    IntelligentMultiLevelCache,
    RedisCacheManager,
    RedisTier,
    cache_with_lock,
)
from tools.dev.servers import start_redis_server

# A hang here (seen once under heavy load) should cost a minute and a traceback, not five.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def redis_tier(url: str, prefix: str, breaker: CircuitBreaker | None = None) -> RedisTier:
    return RedisTier(url, key_prefix=prefix, breaker=breaker or CircuitBreaker("redis"))


@pytest.fixture
async def cleanup(redis_url: str, redis_prefix: str) -> AsyncIterator[None]:
    yield
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_two_instances_sharing_redis_compute_a_cold_key_once(
    redis_url: str, redis_prefix: str, cleanup: None
) -> None:
    a = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    b = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    calls = 0

    async def compute() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return {"answer": 42}

    def call(m: HierarchicalCacheManager) -> Any:
        return m.get_or_compute("cold", "cold:key", compute, ttl_s=60)

    results = await asyncio.gather(*(call(a if i % 2 else b) for i in range(200)))
    assert calls == 1
    assert all(r.value == {"answer": 42} for r in results)
    statuses = {r.status for r in results}
    assert statuses <= {"miss", "shared"}
    # The other instance got the value from L2 and promoted it into its own L1.
    other = b if a.l1.get_now("cold:key") is None else a
    assert (await call(other)).tier == "l1"
    await a.close()
    await b.close()


async def test_a_crashed_lock_owner_blocks_others_for_one_lock_ttl_at_most(
    redis_url: str, redis_prefix: str, cleanup: None
) -> None:
    tier = redis_tier(redis_url, redis_prefix)
    manager = RedisCacheManager(l2=tier, lock_ttl_s=1.0)
    assert await tier.try_lock("orphan:key", 1.0)  # its owner "crashes": never released

    async def compute() -> str:
        return "computed"

    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await manager.get_or_compute("orphan", "orphan:key", compute, ttl_s=60)
    assert result.value == "computed"
    assert 0.5 < loop.time() - started < 5
    await manager.close()


async def test_hits_in_lower_tiers_are_promoted(
    redis_url: str, redis_prefix: str, tmp_path: Path, cleanup: None
) -> None:
    first = IntelligentMultiLevelCache(l2=redis_tier(redis_url, redis_prefix), l3=DiskTier(tmp_path / "l3"))
    calls = 0

    @cache_with_lock(ttl_seconds=60, name="promo", manager=first)
    async def value() -> int:
        nonlocal calls
        calls += 1
        return 7

    await value()
    # A restarted process: empty L1, same Redis and disk.
    second = IntelligentMultiLevelCache(l2=redis_tier(redis_url, redis_prefix), l3=DiskTier(tmp_path / "l3"))
    key = value.cache_key()  # type: ignore[attr-defined]
    got = await second.get_or_compute("promo", key, value, ttl_s=60)
    assert (got.status, got.tier) == ("hit", "l2")
    assert second.l1.get_now(key) is not None
    assert second.l1.stats.promotions == 1
    # Only the disk tier left (Redis entry gone): an L3 hit is promoted to L1 and L2.
    third = IntelligentMultiLevelCache(l2=redis_tier(redis_url, redis_prefix), l3=DiskTier(tmp_path / "l3"))
    assert third.l2 is not None
    await third.l2.delete(key)
    got = await third.get_or_compute("promo", key, value, ttl_s=60)
    assert (got.status, got.tier) == ("hit", "l3")
    assert await third.l2.get(key) is not None
    assert calls == 1
    report = await third.report()
    assert report["tiers"]["l2"]["promotions"] == 1
    assert report["tiers"]["l3"]["hits"] == 1
    for m in (first, second, third):
        await m.close()


async def test_invalidations_reach_other_instances(redis_url: str, redis_prefix: str, cleanup: None) -> None:
    a = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    b = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    await a.start()
    await b.start()
    version = 0

    async def compute() -> int:
        nonlocal version
        version += 1
        return version

    assert (await a.get_or_compute("inv", "inv:k", compute, ttl_s=60, tags=("facility:hq",))).value == 1
    assert (await b.get_or_compute("inv", "inv:k", compute, ttl_s=60, tags=("facility:hq",))).value == 1
    await asyncio.sleep(0.01)
    await a.invalidate_tags(["facility:hq"])
    for _ in range(100):
        if b.invalidations.snapshot()["tags"].get("facility:hq"):
            break
        await asyncio.sleep(0.02)
    assert (await b.get_or_compute("inv", "inv:k", compute, ttl_s=60, tags=("facility:hq",))).value == 2
    # A process started after the invalidation learns it from Redis.
    c = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    await c.start()
    assert c.invalidations.snapshot()["tags"]["facility:hq"] > 0
    for m in (a, b, c):
        await m.close()


async def test_the_warmer_prefills_the_most_requested_keys(
    redis_url: str, redis_prefix: str, cleanup: None
) -> None:
    before = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    computed: list[str] = []

    async def report_for(facility: str) -> str:
        computed.append(facility)
        return f"report {facility}"

    cached = cache_with_lock(ttl_seconds=60, name="warm.report", manager=lambda: current)(report_for)
    current = before
    for facility, n in (("hq", 5), ("annex", 3), ("rare", 1)):
        for _ in range(n):
            await cached(facility)
    warmer = IntelligentCacheWarmer(before, {"warm.report": cached}, top_n=2)
    assert await warmer.flush() == 3
    await before.close()
    # The Redis entries are gone too (say, a flush); only the usage record survives.
    client = aioredis.Redis.from_url(redis_url)
    await client.delete(*[k async for k in client.scan_iter(match=f"{redis_prefix}:cache:*")])
    await client.aclose()

    current = after = RedisCacheManager(l2=redis_tier(redis_url, redis_prefix))
    computed.clear()
    warmed = await IntelligentCacheWarmer(after, {"warm.report": cached}, top_n=2).warm()
    assert len(warmed) == 2
    assert sorted(computed) == ["annex", "hq"]  # the two most requested, not "rare"
    computed.clear()
    assert await cached("hq") == "report hq"
    assert computed == []
    await after.close()


async def test_redis_failing_degrades_to_the_other_tiers_and_recovers(
    redis_prefix: str, tmp_path: Path
) -> None:
    process, url = start_redis_server()
    port = url.rsplit(":", 1)[1].split("/")[0]
    breaker = CircuitBreaker(
        "redis",
        BreakerConfig(
            failure_threshold=3,
            minimum_number_of_calls=3,
            wait_duration_in_open_state=1.0,
            permitted_calls_in_half_open_state=1,
        ),
    )
    manager = IntelligentMultiLevelCache(
        l2=redis_tier(url, redis_prefix, breaker), l3=DiskTier(tmp_path / "l3")
    )
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    try:
        assert (await manager.get_or_compute("deg", "deg:a", compute, ttl_s=60)).value == 1
        process.terminate()
        process.wait(timeout=10)
        for i in range(50):  # every request answered while Redis is down
            result = await manager.get_or_compute("deg", f"deg:{i % 5}", compute, ttl_s=60)
            assert result.value >= 1
        assert breaker.state == "open"
        process, _ = start_redis_server(port=int(port))  # the same port: a restart
        await asyncio.sleep(breaker.retry_after + 0.1)
        assert (await manager.get_or_compute("deg", "deg:new", compute, ttl_s=60)).status == "miss"
        assert manager.l2 is not None
        assert await manager.l2.get("deg:new") is not None  # written to Redis again
        assert breaker.state == "closed"
    finally:
        process.terminate()
        process.wait(timeout=10)
        await manager.close()
