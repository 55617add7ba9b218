from __future__ import annotations

import asyncio

import asyncpg

from shared.db import apply_migrations, migration_files
from shared.event_store import store_event_rows, store_events
from shared.events import AccessEvent, event_record
from tests.factories import event_dict


async def test_events_are_stored_once_per_event_id(database_url: str) -> None:
    events = [AccessEvent.model_validate(event_dict()) for _ in range(100)]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        assert await store_events(pool, events) == 100
        # Redelivery of the whole batch, and duplicates inside one batch, store nothing new.
        assert await store_events(pool, events + events[:10]) == 0
        assert await pool.fetchval("SELECT count(*) FROM access_events") == 100
        assert await pool.fetchval("SELECT count(DISTINCT event_id) FROM access_events") == 100
    finally:
        await pool.close()


async def test_stored_row_keeps_every_field_and_the_extras(database_url: str) -> None:
    event = AccessEvent.model_validate(
        event_dict(
            event_id="e-full",
            access_result="denied",
            badge_status="expired",
            door_held_open_time=12.5,
            entry_without_badge=True,
            device_status="tamper",
            facility_id="hq",
            firmware="1.2",
        )
    )
    conn = await asyncpg.connect(database_url)
    try:
        assert await store_events(conn, [event]) == 1
        row = await conn.fetchrow("SELECT * FROM access_events WHERE event_id = 'e-full'")
    finally:
        await conn.close()
    assert row is not None
    assert row["time"] == event.timestamp
    assert row["access_result"] == "Denied"
    assert row["badge_status"] == "Expired"
    assert row["door_held_open_time"] == 12.5
    assert row["entry_without_badge"] is True
    assert row["device_status"] == "tamper"
    assert row["facility_id"] == "hq"
    assert row["extra"] == '{"firmware":"1.2"}' or '"firmware"' in row["extra"]
    assert row["seq"] >= 1


async def test_migrations_are_applied_once(database_url: str) -> None:
    # The fixture already migrated; a second (and concurrent) run applies nothing.
    assert await apply_migrations(database_url, "primary") == []
    conn = await asyncpg.connect(database_url)
    try:
        names = await conn.fetch("SELECT name FROM schema_migrations WHERE target = 'primary'")
    finally:
        await conn.close()
    assert [r["name"] for r in names] == [p.name for p in migration_files("primary")]
    assert names[0]["name"] == "0001_access_events.sql"


async def test_replica_schema_has_the_reference_primary_key(replica_url: str) -> None:
    conn = await asyncpg.connect(replica_url)
    try:
        cols = await conn.fetch(
            """SELECT a.attname FROM pg_index i JOIN pg_attribute a
                 ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = 'access_events_replica'::regclass AND i.indisprimary"""
        )
    finally:
        await conn.close()
    assert {r["attname"] for r in cols} == {"time", "event_id"}


async def test_the_processor_path_stores_a_redelivered_overlapping_batch_once(database_url: str) -> None:
    rows = [event_record(AccessEvent.model_validate(event_dict())) for _ in range(60)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("LISTEN access_events_written")
        notified: list[str] = []
        await conn.add_listener("access_events_written", lambda *args: notified.append(args[-1]))
        assert await store_event_rows(conn, rows[:40]) == 40  # straight COPY
        # A redelivery overlapping stored rows, with a duplicate inside the batch: the COPY fails
        # as a whole and the staging path stores only the 20 new rows.
        assert await store_event_rows(conn, rows[20:] + rows[50:51]) == 20
        assert await store_event_rows(conn, rows) == 0
        assert await conn.fetchval("SELECT count(*) FROM access_events") == 60
        assert await conn.fetchval("SELECT count(DISTINCT event_id) FROM access_events") == 60
        await asyncio.sleep(0.2)
    finally:
        await conn.close()
    # The written-rows signal fired for both paths (listeners invalidate caches on it).
    assert len(notified) >= 2
