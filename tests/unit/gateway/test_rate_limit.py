"""Ingestion rate limits with the `limits` library (in-memory storage: no I/O)."""

from __future__ import annotations

import time

import pytest

from services.gateway.rate_limit import IngestLimiter
from shared.errors import ApiError


async def test_request_budget_then_429_with_headers() -> None:
    limiter = IngestLimiter("3/minute", None)
    for expected_remaining in (2, 1, 0):
        quota = await limiter.hit_request("key:a")
        assert quota is not None
        assert quota.remaining == expected_remaining
        assert quota.headers()["X-RateLimit-Limit"] == "3"
    with pytest.raises(ApiError) as info:
        await limiter.hit_request("key:a")
    error = info.value
    assert error.status_code == 429
    assert error.headers is not None
    assert 1 <= int(error.headers["Retry-After"]) <= 60
    assert error.headers["X-RateLimit-Remaining"] == "0"
    assert int(error.headers["X-RateLimit-Reset"]) >= int(time.time())
    # Another key has its own budget.
    assert await limiter.hit_request("key:b") is not None


async def test_event_budget_counts_events_and_refuses_a_batch_larger_than_the_limit() -> None:
    limiter = IngestLimiter(None, "100/minute")
    assert not limiter.request_limits
    quota = await limiter.hit_events("ip:1", 60)
    assert quota is not None
    assert quota.remaining == 40
    with pytest.raises(ApiError, match="rate limit"):
        await limiter.hit_events("ip:1", 50)
    with pytest.raises(ApiError, match="exceed the limit"):
        await limiter.hit_events("ip:2", 101)


def test_disabled_without_settings_and_bad_spec_is_named() -> None:
    assert not IngestLimiter(None, None).enabled
    with pytest.raises(ValueError, match="INGEST_RATE_LIMIT"):
        IngestLimiter("lots", None)
