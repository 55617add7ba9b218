"""REST ingestion against a real broker: acks, keys, all-or-nothing, limits, API keys, broker outage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.kafka import create_consumer
from tests.factories import event_dict
from tests.integration.gateway.conftest import serving, write_breakers, write_routes
from tools.dev.embedded import free_port

pytestmark = pytest.mark.integration


def settings_for(tmp_path: Path, bootstrap: str, topic: str, **extra: Any) -> GatewaySettings:
    return GatewaySettings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        ACCESS_EVENTS_TOPIC=topic,
        ACCESS_EVENTS_PARTITIONS=2,
        KAFKA_REQUEST_TIMEOUT_MS=2000,
        GATEWAY_RUN_EVENT_PROCESSOR=False,
        TRACING_ENABLED=False,
        CIRCUIT_BREAKER_CONFIG=write_breakers(
            tmp_path, kafka={"failure_threshold": 2, "wait_duration_in_open_state": 5}
        ),
        GATEWAY_ROUTES_CONFIG=write_routes(tmp_path, "http://127.0.0.1:1"),
        **extra,
    )


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 15.0) -> list[Any]:
    consumer = create_consumer(
        bootstrap, topic, group_id=topic + "-check", session_timeout_ms=2000, heartbeat_interval_ms=300
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(records) < expected:
            batch = await consumer.getmany(timeout_ms=200)
            for partition_records in batch.values():
                records.extend(partition_records)
        # A little longer, to see anything that should not be there.
        batch = await consumer.getmany(timeout_ms=500)
        for partition_records in batch.values():
            records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def test_batch_is_acknowledged_keyed_by_door_and_invalid_batches_publish_nothing(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    app = create_app(settings_for(tmp_path, kafka_bootstrap, topic_name))
    async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        bad = [event_dict(), event_dict(access_result="Perhaps"), event_dict(person_id="")]
        rejected = await client.post("/api/v1/events", json=bad)
        assert rejected.status_code == 422
        assert [d["index"] for d in rejected.json()["error"]["details"]] == [1, 2]

        good = [event_dict(door_id=f"door-{i % 3}") for i in range(50)]
        accepted = await client.post("/api/v1/events", json=good)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"accepted": 50}
        single = event_dict(door_id="door-0")
        assert (await client.post("/api/v1/events", json=single)).json() == {"accepted": 1}
        assert (await client.post("/api/v1/events", content=b"{not json")).status_code == 400

    records = await consume_all(kafka_bootstrap, topic_name, 51)
    ids = sorted(orjson.loads(r.value)["event_id"] for r in records)
    assert ids == sorted([e["event_id"] for e in good] + [single["event_id"]])
    for record in records:
        assert record.key == orjson.loads(record.value)["door_id"].encode()
    # Each door's events are in one partition, in the order they were sent.
    by_door: dict[bytes, set[int]] = {}
    for record in records:
        by_door.setdefault(record.key, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in by_door.values())


async def test_limits_api_keys_and_rate_limits(tmp_path: Path, kafka_bootstrap: str, topic_name: str) -> None:
    settings = settings_for(
        tmp_path,
        kafka_bootstrap,
        topic_name,
        MAX_EVENTS_PER_REQUEST=5,
        MAX_REQUEST_BYTES=4096,
        API_KEYS="alpha, beta",
        INGEST_RATE_LIMIT="3/minute",
    )
    async with serving(create_app(settings)) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        missing = await client.post("/api/v1/events", json=event_dict())
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        wrong = await client.post("/api/v1/events", json=event_dict(), headers={"x-api-key": "gamma"})
        assert wrong.status_code == 403
        assert wrong.json()["error"]["code"] == "invalid_api_key"

        alpha = {"x-api-key": "alpha"}
        too_many = await client.post("/api/v1/events", json=[event_dict() for _ in range(6)], headers=alpha)
        assert too_many.status_code == 413
        too_big = await client.post("/api/v1/events", content=b"[" + b" " * 5000 + b"]", headers=alpha)
        assert too_big.status_code == 413
        ok = await client.post("/api/v1/events", json=[event_dict()], headers=alpha)
        assert ok.status_code == 202, ok.text
        assert ok.headers["x-ratelimit-limit"] == "3"
        assert ok.headers["x-ratelimit-remaining"] == "0"
        limited = await client.post("/api/v1/events", json=[event_dict()], headers=alpha)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert limited.json()["error"]["code"] == "rate_limited"
        # Another key has its own budget.
        assert (
            await client.post("/api/v1/events", json=event_dict(), headers={"x-api-key": "beta"})
        ).status_code == 202


async def test_the_hostile_corpus_gets_4xx_or_202_from_a_real_gateway_never_5xx(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    from tests.hostile import STORED, hostile_messages

    app = create_app(settings_for(tmp_path, kafka_bootstrap, topic_name))
    async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        for message in hostile_messages():
            answer = await client.post(
                "/api/v1/events", content=message.value or b"", headers={"content-type": "application/json"}
            )
            assert answer.status_code in (202, 400, 413, 422), (message.name, answer.text[:300])
            if answer.status_code != 202:
                assert answer.json()["error"]["code"], message.name
            elif message.name != "json_array":  # an array of events is what REST accepts
                assert message.expect in (STORED, "either"), message.name
        assert (await client.get("/breaker")).json()["kafka"]["state"] == "closed"


async def test_without_api_keys_the_rate_limit_counts_the_client_address_not_a_header(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    settings = settings_for(tmp_path, kafka_bootstrap, topic_name, INGEST_RATE_LIMIT="2/minute")
    async with serving(create_app(settings)) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        for key in ("a", "b"):
            answer = await client.post("/api/v1/events", json=event_dict(), headers={"x-api-key": key})
            assert answer.status_code == 202, answer.text
        # A new X-API-Key or a forged X-Forwarded-For buys no new budget: no proxy is trusted.
        for headers in ({"x-api-key": "c"}, {"x-forwarded-for": "10.9.9.9"}):
            answer = await client.post("/api/v1/events", json=event_dict(), headers=headers)
            assert answer.status_code == 429, headers


async def test_trusted_proxies_make_the_forwarded_client_the_identity(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    settings = settings_for(
        tmp_path,
        kafka_bootstrap,
        topic_name,
        INGEST_RATE_LIMIT="2/minute",
        TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1",
    )
    async with serving(create_app(settings)) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:

        async def post(forwarded: str) -> int:
            answer = await client.post(
                "/api/v1/events", json=event_dict(), headers={"x-forwarded-for": forwarded}
            )
            return answer.status_code

        assert await post("203.0.113.7") == 202
        assert await post("203.0.113.7, 10.1.2.3") == 202  # through a second trusted proxy
        assert await post("203.0.113.7") == 429
        # Prepending a forged address changes nothing: the rightmost untrusted one counts.
        assert await post("198.51.100.1, 203.0.113.7") == 429
        assert await post("198.51.100.1") == 202
    with pytest.raises(ValueError, match="not an address or CIDR"):
        settings_for(tmp_path, kafka_bootstrap, topic_name, TRUSTED_PROXIES="10.0.0.0/8, proxy.local")


async def test_no_client_input_opens_the_kafka_breaker_and_oversized_events_are_refused_at_the_door(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    app = create_app(settings_for(tmp_path, kafka_bootstrap, topic_name))
    async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        huge = [event_dict(), event_dict(blob="x" * 1_100_000)]  # passes the 16 MiB body limit
        between = [event_dict(), event_dict(blob="x" * 100_000)]  # over 64 KiB, under Kafka's 1 MiB
        hostile = [
            event_dict(timestamp="9999-12-31T23:59:59-05:00"),
            event_dict(timestamp="0001-01-01T00:00:00Z"),
            event_dict(person_id="nul\u0000"),
        ]
        for _ in range(5):
            for batch, index in ((huge, 1), (between, 1)):
                answer = await client.post("/api/v1/events", json=batch)
                assert answer.status_code == 413, answer.text
                assert answer.json()["error"]["code"] == "event_too_large"
                assert [d["index"] for d in answer.json()["error"]["details"]] == [index]
            answer = await client.post("/api/v1/events", json=hostile)
            assert answer.status_code == 422, answer.text
            assert [d["index"] for d in answer.json()["error"]["details"]] == [0, 1, 2]
        breaker = (await client.get("/breaker")).json()["kafka"]
        assert breaker["state"] == "closed"
        assert breaker["open"] == 0
        ok = await client.post("/api/v1/events", json=event_dict())
        assert ok.status_code == 202, ok.text
    # Nothing of the refused requests was published: only the last event is on the topic.
    records = await consume_all(kafka_bootstrap, topic_name, 1, timeout_s=5)
    assert len(records) == 1


async def test_a_partial_publish_names_exactly_the_published_events_and_is_not_a_broker_fault(
    kafka_bootstrap: str, topic_name: str
) -> None:
    """The producer refuses message 3 (over Kafka's 1 MiB): 0-2 are published, and the error
    says so; the breaker does not count it."""
    from services.gateway.publisher import EventPublisher, Message, MessageRefused
    from shared.breaker import BreakerRegistry

    publisher = EventPublisher(kafka_bootstrap, topic_name, 1, timeout_s=5)
    breaker = BreakerRegistry.from_dict({"breakers": {"kafka": {"failure_threshold": 1}}}).get("kafka")
    good = [Message(b"d", orjson.dumps(event_dict())) for _ in range(3)]
    batch = [*good, Message(b"d", b"x" * 1_200_000), *good]
    try:
        for _ in range(3):
            with pytest.raises(MessageRefused) as info:
                await breaker.call(publisher.publish, batch)
            assert info.value.outcome.acknowledged == [0, 1, 2]
            assert info.value.outcome.refused == [3, 4, 5, 6]
            assert info.value.outcome.unknown == []
        assert breaker.state == "closed"
    finally:
        await publisher.close()
    records = await consume_all(kafka_bootstrap, topic_name, 9, timeout_s=5)
    assert len(records) == 9  # three times the three acknowledged events, nothing else


async def test_broker_unavailable_gives_503_then_the_kafka_breaker_answers_fast(
    tmp_path: Path, topic_name: str
) -> None:
    dead_broker = f"127.0.0.1:{free_port()}"
    app = create_app(settings_for(tmp_path, dead_broker, topic_name))
    async with serving(app) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        for _ in range(2):
            response = await client.post("/api/v1/events", json=event_dict())
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "broker_unavailable"
            assert response.json()["error"]["details"]["published"] == []
            assert dead_broker not in response.text  # no internal detail reaches the client
            assert int(response.headers["retry-after"]) >= 1
        assert (await client.get("/breaker")).json()["kafka"]["state"] == "open"
        started = time.perf_counter()
        fast = await client.post("/api/v1/events", json=event_dict())
        assert time.perf_counter() - started < 0.5
        assert fast.status_code == 503
        assert 1 <= int(fast.headers["retry-after"]) <= 5
        assert "circuit breaker" in fast.json()["error"]["message"]
