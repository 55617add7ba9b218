"""What the shared tiers hold is data, never code: a pickle planted in Redis or in the disk
tier (as a value, a raw entry, or a warmer record) is refused as a miss and never executed."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import diskcache
import pandas as pd
import pytest
import redis.asyncio as aioredis

from shared.breaker import CircuitBreaker
from shared.cache import (
    DiskTier,
    IntelligentCacheWarmer,
    IntelligentMultiLevelCache,
    MemoryCacheManager,
    RedisCacheManager,
    RedisTier,
)
from shared.cache.entry import MAGIC

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


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


async def compute() -> dict[str, int]:
    return {"computed": 1}


async def test_a_pickle_planted_in_redis_is_a_miss_and_never_runs(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    l2 = tier(redis_url, redis_prefix)
    await redis_client.set(l2.entry_key("k"), pickle.dumps(Payload(marker)))
    manager = RedisCacheManager(l2=l2)
    result = await manager.get_or_compute("n", "k", compute, ttl_s=60)
    assert (result.status, result.value) == ("miss", {"computed": 1})
    assert not marker.exists()
    # The planted bytes were replaced by an entry in the fleet's own format.
    stored = await redis_client.get(l2.entry_key("k"))
    assert stored is not None
    assert stored.startswith(MAGIC)
    await manager.close()


async def test_a_pickle_planted_on_disk_is_a_miss_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = tmp_path / "l3"
    # Written with diskcache's default serialiser: a row in pickle mode, and raw pickle bytes.
    with diskcache.Cache(str(directory)) as planted:
        planted.set("object", Payload(marker))
        planted.set("bytes", pickle.dumps(Payload(marker)))
    manager = MemoryCacheManager(l3=DiskTier(directory))
    for key in ("object", "bytes"):
        result = await manager.get_or_compute("n", key, compute, ttl_s=60)
        assert (result.status, result.value) == ("miss", {"computed": 1}), key
    assert not marker.exists()
    await manager.close()


async def test_planted_warmer_records_are_ignored(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    calls: list[str] = []

    async def report(facility: str) -> str:
        calls.append(facility)
        return facility

    l2 = tier(redis_url, redis_prefix)
    await redis_client.zincrby(l2.usage_key, 10, "report:k1")
    await redis_client.hset(
        l2.calls_key, "report:k1", pickle.dumps(("report", (), {"facility": Payload(marker)}))
    )
    # A JSON record whose argument fails the function's type hints is not used either.
    await redis_client.zincrby(l2.usage_key, 5, "report:k2")
    await redis_client.hset(
        l2.calls_key, "report:k2", b'{"v":1,"name":"report","args":[],"kwargs":{"facility":[1]}}'
    )
    # A valid record is.
    await redis_client.zincrby(l2.usage_key, 1, "report:k3")
    await redis_client.hset(
        l2.calls_key, "report:k3", b'{"v":1,"name":"report","args":[],"kwargs":{"facility":"hq"}}'
    )
    manager = RedisCacheManager(l2=l2)
    warmed = await IntelligentCacheWarmer(manager, {"report": report}).warm()
    assert warmed == ["report:k3"]
    assert calls == ["hq"]
    assert not marker.exists()
    await manager.close()

    # The disk tier's warming record, planted with diskcache's own pickling.
    directory = tmp_path / "l3"
    with diskcache.Cache(str(directory)) as planted:
        planted.set("usage:report:k1", 10)
        planted.set("call:report:k1", ("report", (), {"facility": Payload(marker)}))
    disk_only = MemoryCacheManager(l3=DiskTier(directory))
    assert await IntelligentCacheWarmer(disk_only, {"report": report}).warm() == []
    assert not marker.exists()
    await disk_only.close()


async def test_dataframes_and_json_values_round_trip_through_redis_and_disk(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    frame = pd.DataFrame(
        {"door": ["a", "b", None], "n": [1, 2, 3], "at": pd.to_datetime(["2025-01-01"] * 3, utc=True)}
    ).set_index("n")
    values = {"frame": frame, "json": {"doors": ["a", "b"], "rate": 0.5, "none": None}}
    first = IntelligentMultiLevelCache(l2=tier(redis_url, redis_prefix), l3=DiskTier(tmp_path / "l3"))
    for key, value in values.items():

        async def make(value: object = value) -> object:
            return value

        await first.get_or_compute("n", key, make, ttl_s=60)
    await first.close()
    for drop_redis in (False, True):
        second = IntelligentMultiLevelCache(l2=tier(redis_url, redis_prefix), l3=DiskTier(tmp_path / "l3"))
        if drop_redis:
            assert second.l2 is not None
            for key in values:
                await second.l2.delete(key)
        got = await second.get_or_compute("n", "frame", compute, ttl_s=60)
        assert (got.status, got.tier) == ("hit", "l3" if drop_redis else "l2")
        pd.testing.assert_frame_equal(got.value, frame)
        got = await second.get_or_compute("n", "json", compute, ttl_s=60)
        assert got.value == values["json"]
        await second.close()


async def test_a_value_without_a_safe_form_stays_in_memory_only(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    l2 = tier(redis_url, redis_prefix)
    manager = RedisCacheManager(l2=l2)

    async def opaque() -> object:
        return Payload(Path("/nonexistent"))

    result = await manager.get_or_compute("n", "opaque", opaque, ttl_s=60)
    assert isinstance(result.value, Payload)
    assert await redis_client.get(l2.entry_key("opaque")) is None
    assert (await manager.get_or_compute("n", "opaque", opaque, ttl_s=60)).tier == "l1"
    await manager.close()
