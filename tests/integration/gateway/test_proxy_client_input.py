"""Client input through the proxy never opens the `analytics` breaker: bad filters are 422s."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.analytics.app import create_app as create_analytics
from services.analytics.settings import AnalyticsSettings
from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from tests.integration.analytics.test_api import HOSTILE_FILTERS
from tests.integration.gateway.conftest import serving, write_breakers, write_routes

pytestmark = pytest.mark.integration


async def test_hostile_filters_through_the_gateway_are_422_and_the_breaker_stays_closed(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topic_name: str
) -> None:
    analytics = create_analytics(AnalyticsSettings(database_url=database_url, tracing_enabled=False))
    async with serving(analytics) as upstream:
        gateway = create_gateway(
            GatewaySettings(
                KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                ACCESS_EVENTS_TOPIC=topic_name,
                GATEWAY_RUN_EVENT_PROCESSOR=False,
                TRACING_ENABLED=False,
                CIRCUIT_BREAKER_CONFIG=write_breakers(
                    tmp_path, analytics={"failure_threshold": 3, "wait_duration_in_open_state": 10}
                ),
                GATEWAY_ROUTES_CONFIG=write_routes(tmp_path, upstream.url, stale_for=0, timeout=10),
            )
        )
        async with serving(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            for _ in range(2):
                for params in HOSTILE_FILTERS:
                    answer = await client.get("/api/v1/analytics/summary", params=params)
                    assert answer.status_code == 422, (params, answer.text[:200])
                    assert answer.json()["error"]["code"] == "validation_error"
            breaker = (await client.get("/breaker")).json()["analytics"]
            assert breaker["state"] == "closed"
            assert breaker["open"] == 0
            assert (await client.get("/api/v1/analytics/summary")).status_code == 200
