"""The uploads' binary COPY: every value arrives as the row had it; rows already stored (before,
concurrently, or twice in one payload) are skipped, and only the new ones are counted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import numpy as np
import orjson
import pyarrow as pa
import pytest

from services.analytics.uploads.copy_binary import EventColumns, encode_copy_binary
from shared.event_store import copy_event_binary

pytestmark = pytest.mark.integration


def _columns(ids: list[str], *, when: list[datetime] | None = None) -> EventColumns:
    n = len(ids)
    when = when or [datetime(2025, 1, 1, 12, 0, i % 60, 123456, tzinfo=UTC) for i in range(n)]
    micros = np.array([int(w.timestamp()) * 1_000_000 + w.microsecond for w in when], dtype=np.int64)

    def text(values: Sequence[str | None]) -> pa.Array:
        return pa.array(values, type=pa.string())

    return EventColumns(
        event_id=text(ids),
        time_us=micros,
        person_id=text([f"person é{i}" for i in range(n)]),
        door_id=text([f'door "{i}"\n' for i in range(n)]),
        badge_id=text([None if i % 2 else f"b{i}" for i in range(n)]),
        access_result=text(["Granted" if i % 3 else "Denied" for i in range(n)]),
        badge_status=text([None if i % 2 else "Expired" for i in range(n)]),
        door_held_open_time=np.array([i * 0.1 for i in range(n)]),
        entry_without_badge=np.array([i % 4 == 0 for i in range(n)]),
        device_status=text(["normal" if i % 5 else "tamper" for i in range(n)]),
        facility_id=text([None if i % 3 == 1 else "hq" for i in range(n)]),
        extra=text(
            [None if i % 2 else orjson.dumps({"firmware": f"1.{i}", "zone": "€"}).decode() for i in range(n)]
        ),
    )


async def test_every_value_arrives_as_given(database_url: str) -> None:
    when = [
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before PostgreSQL's epoch
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2025, 6, 30, 8, 15, 1, 5, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),  # before the Unix epoch
    ]
    columns = _columns([f"e{i}" for i in range(4)], when=when)
    conn = await asyncpg.connect(database_url)
    try:
        assert await copy_event_binary(conn, encode_copy_binary(columns)) == (4, True)
        rows = {r["event_id"]: r for r in await conn.fetch("SELECT * FROM access_events")}
    finally:
        await conn.close()
    for i in range(4):
        row = rows[f"e{i}"]
        assert row["time"] == when[i]
        assert row["person_id"] == f"person é{i}"
        assert row["door_id"] == f'door "{i}"\n'
        assert row["badge_id"] == (None if i % 2 else f"b{i}")
        assert row["access_result"] == ("Granted" if i % 3 else "Denied")
        assert row["badge_status"] == (None if i % 2 else "Expired")
        assert row["door_held_open_time"] == i * 0.1
        assert row["entry_without_badge"] is (i % 4 == 0)
        assert row["device_status"] == ("normal" if i % 5 else "tamper")
        assert row["facility_id"] == (None if i % 3 == 1 else "hq")
        assert (orjson.loads(row["extra"]) if row["extra"] else None) == (
            None if i % 2 else {"firmware": f"1.{i}", "zone": "€"}
        )


async def test_rows_already_stored_are_skipped_and_not_counted(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = encode_copy_binary(_columns([f"e{i}" for i in range(100)]))
        assert await copy_event_binary(conn, first) == (100, True)
        # The same payload again: the direct COPY meets the stored rows, the staging path skips them.
        assert await copy_event_binary(conn, first) == (0, False)
        half_new = encode_copy_binary(_columns([f"e{i}" for i in range(50, 150)]))
        assert await copy_event_binary(conn, half_new, direct=False) == (50, False)
        twice = encode_copy_binary(_columns(["dup", "dup", "single"]))
        assert await copy_event_binary(conn, twice) == (2, False)
        assert await conn.fetchval("SELECT count(*) FROM access_events") == 152
        empty = encode_copy_binary(_columns([]))
        assert await copy_event_binary(conn, empty) == (0, False)
    finally:
        await conn.close()


async def test_concurrent_writers_of_overlapping_rows_store_each_once(database_url: str) -> None:
    payloads = [
        encode_copy_binary(_columns([f"e{j}" for j in range(i * 500, i * 500 + 1_500)])) for i in range(6)
    ]
    pool = await asyncpg.create_pool(database_url, min_size=3, max_size=3)
    try:

        async def write(data: bytes) -> int:
            async with pool.acquire() as conn:
                inserted, _ = await copy_event_binary(conn, data)
                return inserted

        inserted = await asyncio.gather(*(write(p) for p in payloads))
        assert sum(inserted) == 4_000  # e0 .. e3999, each counted by whoever stored it
        assert await pool.fetchval("SELECT count(*) FROM access_events") == 4_000
    finally:
        await pool.close()
