"""Rate limits shared by several gateways through a real Redis."""

from __future__ import annotations

import pytest

from services.gateway.rate_limit import IngestLimiter
from shared.errors import ApiError

pytestmark = pytest.mark.integration


async def test_two_gateways_share_one_budget(redis_url: str, redis_prefix: str) -> None:
    first = IngestLimiter("3/minute", None, redis_url)
    second = IngestLimiter("3/minute", None, redis_url)
    identity = f"key:{redis_prefix}"
    try:
        await exercise(first, second, identity)
    finally:
        await first.aclose()
        await second.aclose()


async def exercise(first: IngestLimiter, second: IngestLimiter, identity: str) -> None:
    await first.hit_request(identity)
    await second.hit_request(identity)
    quota = await first.hit_request(identity)
    assert quota is not None
    assert quota.remaining == 0
    with pytest.raises(ApiError) as info:
        await second.hit_request(identity)
    assert info.value.status_code == 429
