"""Redis (analytics' L2 cache) stops and starts during analytics traffic and ingestion.

A cache outage costs speed, never answers: analytics falls back to its other tiers and the
database, its `redis` breaker opens and closes again, and every acknowledged event is stored.
The test runs its own redis-server on a free port: the one it stops is never a shared server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import count

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.faults._harness import Traffic, dead_letters, figures, ingest_request, wait_stored
from tools.dev.fleet import ServiceProcess, service_env
from tools.dev.servers import start_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

STATE_NAMES = {0.0: "closed", 1.0: "half_open", 2.0: "open"}


class OwnRedis:
    """A redis-server of this test alone, restartable on the same port."""

    def __init__(self) -> None:
        self.proc, url = start_redis_server()
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def start(self) -> None:
        self.proc, _ = start_redis_server(port=self.port)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    redis = OwnRedis()
    try:
        yield redis
    finally:
        if redis.proc.poll() is None:
            redis.stop()


def breaker_states_from_metrics(url: str) -> dict[str, str]:
    states = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        if family.name == "circuit_breaker_state":
            for sample in family.samples:
                states[sample.labels["name"]] = STATE_NAMES.get(sample.value, str(sample.value))
    return states


def wait_closed_in_metrics(url: str, name: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = breaker_states_from_metrics(url).get(name, "missing")
    while state != "closed" and time.monotonic() < deadline:
        # A call has to pass through the half-open breaker for it to close.
        httpx.get(url + "/api/v1/analytics/summary", params={"start": "2019-01-01T00:00:00Z"}, timeout=10)
        time.sleep(0.5)
        state = breaker_states_from_metrics(url).get(name, "missing")
    return state


def mixed_requests() -> Callable[[httpx.Client], tuple[int, tuple[str, ...]]]:
    """Alternately 20 new events and a summary query with a window never asked before (so it
    misses the in-process tier and reaches Redis)."""
    ingest = ingest_request(batch=20)
    numbers = count()
    origin = datetime(2020, 1, 1, tzinfo=UTC)

    def send(client: httpx.Client) -> tuple[int, tuple[str, ...]]:
        n = next(numbers)
        if n % 2 == 0:
            return ingest(client)
        start = (origin + timedelta(minutes=n)).isoformat()
        try:
            response = client.get("/api/v1/analytics/summary", params={"start": start})
        except httpx.HTTPError:
            return 0, ()
        return response.status_code, ()

    return send


def test_redis_stopped_and_started_during_analytics_traffic(
    own_redis: OwnRedis,
    database_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    port = own_redis.port
    env = service_env(database_url, kafka_bootstrap, topic_name)
    analytics = start_service(
        "services.analytics",
        {**env, "CACHE_TYPE": "redis", "CACHE_HOST": "127.0.0.1", "CACHE_PORT": str(port)},
        wait_ready=True,
    )
    gateway = start_service("services.gateway", {**env, "ANALYTICS_URL": analytics.url}, wait_ready=True)
    traffic = Traffic(mixed_requests(), gateway.url)
    traffic.start()
    try:
        time.sleep(3)
        fault_at = time.monotonic()
        own_redis.stop()
        seen: set[str] = set()
        while time.monotonic() - fault_at < 4:
            seen.add(breaker_states_from_metrics(analytics.url).get("redis", "missing"))
            time.sleep(0.25)
        own_redis.start()
        back_at = time.monotonic()
        time.sleep(4)
    finally:
        ledger = traffic.stop()
    rows, distinct = wait_stored(database_url, ledger.acknowledged)
    result = figures(
        "Redis stopped for 4 s during analytics traffic and ingestion",
        ledger,
        fault_at=fault_at,
        back_at=back_at,
        stored_rows=rows,
        stored_distinct=distinct,
        dead_lettered=dead_letters(kafka_bootstrap, topic_name + ".dlq"),
        breakers={"redis": wait_closed_in_metrics(analytics.url, "redis")},
        queries=sum(1 for a in ledger.snapshot() if not a.event_ids),
        redis_breaker_states_during_outage=sorted(seen),
        **{"5xx_during_outage": ledger.server_errors(fault_at, back_at)},
    )
    assert result["acknowledged"] > 0
    assert (result["lost"], result["duplicated"], result["dead_lettered"]) == (0, 0, 0)
    # Redis is a cache: its outage never costs an answer.
    assert (result["5xx_before_fault"], result["5xx_during_outage"], result["5xx_after_recovery"]) == (
        0,
        0,
        0,
    ), analytics.logs()
    assert "open" in seen  # the outage was noticed, and the cache stopped waiting on Redis
    assert result["breakers_after"] == {"redis": "closed"}
