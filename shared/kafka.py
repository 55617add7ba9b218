"""aiokafka producer, consumer and topic helpers with the fleet's settings.

Idempotent and transactional producers are off on purpose: the embedded broker does not
support them, and the fleet gets exactly-once storage from the idempotent sink
(`ON CONFLICT (event_id) DO NOTHING`) instead.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


# Producer batch and request sizes: a batch of a partition holds ~900 typical events.
PRODUCER_BATCH_BYTES = 256 * 1024
PRODUCER_REQUEST_BYTES = 1024 * 1024


def create_producer(
    bootstrap_servers: str, *, request_timeout_ms: int = 10_000, linger_ms: int = 2
) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=PRODUCER_REQUEST_BYTES,
        compression_type=None,
        client_id="sentinel-fleet",
    )


def create_consumer(
    bootstrap_servers: str,
    *topics: str,
    group_id: str,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 1_000,
    max_poll_records: int = 5_000,
    fetch_max_wait_ms: int = 500,
) -> AIOKafkaConsumer:
    """A consumer that never commits on its own: callers commit after the batch is stored."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=fetch_max_wait_ms,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        client_id="sentinel-fleet",
    )


async def ensure_topics(bootstrap_servers: str, topics: dict[str, int], *, timeout_ms: int = 10_000) -> None:
    """Create the topics (name → partitions) that do not exist yet; existing ones are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
                log.info("created topics %s", [t.name for t in missing])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
