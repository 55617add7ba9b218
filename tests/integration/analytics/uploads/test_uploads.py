"""CSV uploads through the real app and database: good rows stored, bad rows reported by line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from services.analytics.settings import AnalyticsSettings
from services.analytics.uploads.async_file_processor import AsyncFileProcessor
from services.analytics.worker_pool import WorkerPool
from tests.integration.analytics.test_api import Client, _client

pytestmark = pytest.mark.integration

HEADER = "Timestamp,Person ID,Token ID,Device name,Access result\n"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    settings = AnalyticsSettings(
        database_url=database_url,
        cache_type="memory",
        tracing_enabled=False,
        analytics_max_workers=1,
        upload_max_bytes=64 * 1024,
    )
    async for http in _client(settings):
        yield http


async def _upload(client: Client, content: bytes, name: str = "events.csv", ctype: str = "text/csv") -> dict:
    answer = await client.post("/api/v1/uploads", files={"file": (name, content, ctype)})
    return {"status": answer.status_code, **answer.json()}


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM access_events"))
    finally:
        await conn.close()


async def test_reference_headers_bom_quotes_and_mixed_timestamps(client: Client, database_url: str) -> None:
    body = (
        "\ufeff"
        + HEADER
        + "2025-01-01T12:00:00.123456,p1,b1,front,Granted\n"  # line 2: naive ISO
        + '2025-01-01 12:01:00+02:00,p2,b2,"door, with comma",denied\n'  # line 3: offset, quoted comma
        + "1735732920000,p3,,back,GRANTED\n"  # line 4: epoch ms, no badge
        + '"2025-01-01T12:03:00Z","p4",b4,"multi\nline door",Timeout\n'  # lines 5-6
        + "2025-01-01T12:04:00Z,p5,b5,side,Error\n"  # line 7
    ).encode()
    report = await _upload(client, body)
    assert report["status"] == 201, report
    assert report["rows_inserted"] == 5
    assert report["rows_rejected"] == 0
    assert report["errors"] == []
    assert report["rows_per_second"] > 0
    assert report["upload_id"]
    conn = await asyncpg.connect(database_url)
    try:
        rows = {r["person_id"]: r for r in await conn.fetch("SELECT * FROM access_events")}
    finally:
        await conn.close()
    assert rows["p2"]["door_id"] == "door, with comma"
    assert rows["p2"]["time"].isoformat() == "2025-01-01T10:01:00+00:00"
    assert rows["p3"]["badge_id"] is None
    assert rows["p3"]["time"].isoformat() == "2025-01-01T12:02:00+00:00"
    assert rows["p4"]["door_id"] == "multi\nline door"
    assert rows["p1"]["access_result"] == "Granted"
    assert rows["p1"]["badge_id"] == "b1"

    again = await _upload(client, body)
    assert again["status"] == 201
    assert again["rows_inserted"] == 0  # deterministic event ids: nothing stored twice
    assert await _count(database_url) == 5


async def test_bad_rows_are_reported_with_the_line_where_they_start(
    client: Client, database_url: str
) -> None:
    body = (
        HEADER
        + "2025-01-01T12:00:00Z,p1,b1,front,Granted\n"  # 2 ok
        + "not a time,p2,b2,front,Granted\n"  # 3 bad timestamp
        + "2025-01-01T12:00:00Z,,b3,front,Granted\n"  # 4 empty person
        + '"2025-01-01T12:00:00Z",p4,b4,"two\nlines",Maybe\n'  # 5-6 bad result, starts on 5
        + "2025-01-01T12:00:00Z,p5,b5,front\n"  # 7 missing a field
        + "\n"  # 8 blank: ignored
        + "2025-01-01T12:00:00Z,p6,b6,front,Granted,extra\n"  # 9 one field too many
        + "2025-01-01T12:05:00Z,p7,b7,front,denied\n"  # 10 ok
    ).encode()
    report = await _upload(client, body)
    assert report["status"] == 201, report
    assert report["rows_inserted"] == 2
    assert report["rows_rejected"] == 5
    assert [e["line"] for e in report["errors"]] == [3, 4, 5, 7, 9]
    reasons = {e["line"]: e["reason"] for e in report["errors"]}
    assert "timestamp" in reasons[3]
    assert "person_id is empty" in reasons[4]
    assert "access_result" in reasons[5]
    assert "expected 5 fields, found 4" in reasons[7]
    assert "expected 5 fields, found 6" in reasons[9]
    assert await _count(database_url) == 2


async def test_a_chunk_with_a_hundred_long_facility_ids_is_stored_and_announced(
    client: Client, database_url: str
) -> None:
    """The invalidation signal would exceed NOTIFY's 8000 bytes: it is sent without the list,
    never failing the write."""
    body = "Timestamp,Person ID,Device name,Access result,facility_id\n" + "".join(
        f"2025-01-01T12:00:{i % 60:02d}Z,p{i},d{i},Granted,{'facility-' + str(i).zfill(3) + 'x' * 180}\n"
        for i in range(100)
    )
    listener = await asyncpg.connect(database_url)
    heard: list[str] = []
    await listener.add_listener("access_events_written", lambda *args: heard.append(args[3]))
    try:
        report = await _upload(client, body.encode())
        assert report["status"] == 201, report
        assert report["rows_inserted"] == 100
        assert report["rows_rejected"] == 0
        await asyncio.sleep(0.5)
    finally:
        await listener.close()
    assert await _count(database_url) == 100
    payloads = [orjson.loads(p) for p in heard]
    assert sum(p["rows"] for p in payloads) == 100
    assert any(p["facilities"] is None for p in payloads)
    assert all(len(p.encode()) < 8000 for p in heard)


async def test_every_kind_of_bad_file_gets_a_clear_answer(client: Client) -> None:
    too_big = (HEADER + "2025-01-01T12:00:00Z,p1,b1,front,Granted\n" * 2000).encode()
    answer = await _upload(client, too_big)
    assert answer["status"] == 413
    assert answer["error"]["code"] == "payload_too_large"

    answer = await _upload(client, b"\x89PNG\r\n\x1a\n\x00\x00", name="photo.png", ctype="image/png")
    assert answer["status"] == 415
    answer = await _upload(client, b"a,b\n\x00\x01\x02", name="data.csv")
    assert answer["status"] == 415
    raw = await client.post("/api/v1/uploads", content=b"Timestamp\n", headers={"content-type": "text/csv"})
    assert raw.status_code == 415
    assert raw.json()["error"]["code"] == "unsupported_media_type"

    answer = await _upload(client, b"")
    assert answer["status"] == 422
    assert "empty" in answer["error"]["message"]
    answer = await _upload(client, HEADER.encode())
    assert answer["status"] == 422
    assert "no rows" in answer["error"]["message"]
    answer = await _upload(client, b"Timestamp,Person ID,Colour\n2025-01-01T00:00:00Z,p1,red\n")
    assert answer["status"] == 422
    assert answer["error"]["details"]["missing"] == ["door_id", "access_result"]
    assert "door_id" in answer["error"]["message"]
    assert "access_result" in answer["error"]["message"]
    no_file = await client.post("/api/v1/uploads", data={"note": "x"}, files={"other": ("", b"")})
    assert no_file.status_code in {415, 422}


async def test_a_malformed_body_or_header_line_is_a_4xx_not_a_500(client: Client) -> None:
    """Both were 500s found by fuzzing: a multipart body whose part headers are garbage, and a
    header line the csv module refuses (a bare carriage return inside a field)."""
    garbage = await client.post(
        "/api/v1/uploads",
        content=b"--b\r\n[{'x': [None, 5.9e-08]}]--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert garbage.status_code == 400
    assert garbage.json()["error"]["code"] == "malformed_multipart"
    answer = await _upload(client, b"\x0c\xffE\r\xfeL\x13}OQ\x11c\x0e\x0b?\x16\r\n", name="file")
    assert answer["status"] == 422
    assert answer["error"]["code"] == "invalid_header"


async def test_extra_columns_are_kept_and_field_names_accepted(client: Client, database_url: str) -> None:
    body = (
        b"event_id,timestamp,person_id,door_id,access_result,badge_status,door_held_open_time,"
        b"entry_without_badge,facility_id,firmware\n"
        b"e-1,2025-01-01T00:00:00Z,p1,d1,granted,expired,45.5,yes,hq,1.2\n"
    )
    report = await _upload(client, body)
    assert report["rows_inserted"] == 1, report
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM access_events WHERE event_id = 'e-1'")
    finally:
        await conn.close()
    assert row is not None
    assert row["badge_status"] == "Expired"
    assert row["door_held_open_time"] == 45.5
    assert row["entry_without_badge"] is True
    assert row["facility_id"] == "hq"
    assert '"firmware": "1.2"' in row["extra"]


async def test_read_csv_chunks_yields_chunks_of_the_configured_size(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write(HEADER)
        for i in range(5_500):
            fh.write(f"2025-01-01T00:00:{i % 60:02d}Z,p{i},b{i},d{i % 7},Granted\n")
    workers = WorkerPool(1)
    await workers.start()
    try:
        processor = AsyncFileProcessor(workers, chunk_size=2_000, max_memory_mb=512)
        frames = [f async for f in processor.read_csv_chunks(str(path))]
        assert [len(f) for f in frames] == [2_000, 2_000, 1_500]
        assert frames[0]["line"].iloc[0] == 2
        assert frames[2]["line"].iloc[-1] == 5_501
        assert list(frames[0].columns[:4]) == ["event_id", "time", "person_id", "door_id"]

        tight = AsyncFileProcessor(workers, chunk_size=50_000, max_memory_mb=16)
        total = sum([len(f) async for f in tight.read_csv_chunks(str(path))])
        assert total == 5_500
        assert tight.smallest_chunk < 50_000  # the budget, not the setting, sized the chunks
    finally:
        workers.close()


@pytest.fixture
async def big_client(database_url: str) -> AsyncIterator[Client]:
    settings = AnalyticsSettings(
        database_url=database_url,
        cache_type="memory",
        tracing_enabled=False,
        analytics_max_workers=2,
        analytics_chunk_size=1_000,
        upload_max_bytes=4 * 1024 * 1024,
    )
    async for http in _client(settings):
        yield http


async def test_a_file_of_many_chunks_is_split_parsed_and_stored_in_parallel(
    big_client: Client, database_url: str
) -> None:
    records, bad_lines, line = [], [], 2
    for i in range(7_000):
        door = f'"door\n{i % 9}"' if i % 500 == 7 else f"d{i % 40}"  # some records span two lines
        result = "Maybe" if i % 250 == 3 else "Granted"
        stamp = f"2025-01-0{1 + i % 9}T{i % 24:02d}:00:{i % 60:02d}Z"
        if i == 4_321:
            door = 'a "stray" quote'  # only the csv module may read it: it takes over from here
        record = f"{stamp},p{i},b{i % 77},{door},{result}"
        if result == "Maybe":
            bad_lines.append(line)
        records.append(record)
        line += 1 + record.count("\n")
    body = (HEADER + "\n".join(records) + "\n").encode()
    good = 7_000 - len(bad_lines)

    report = await _upload(big_client, body)
    assert report["status"] == 201, report
    assert report["chunks"] >= 7  # at most ANALYTICS_CHUNK_SIZE rows per chunk
    assert [e["line"] for e in report["errors"]] == bad_lines
    assert report["rows_inserted"] == good
    assert await _count(database_url) == good
    conn = await asyncpg.connect(database_url)
    try:
        stray = await conn.fetchval("SELECT door_id FROM access_events WHERE person_id = 'p4321'")
        two_lines = await conn.fetchval("SELECT door_id FROM access_events WHERE person_id = 'p507'")
    finally:
        await conn.close()
    assert stray == 'a "stray" quote'
    assert two_lines == "door\n3"

    again = await _upload(big_client, body)
    assert again["rows_inserted"] == 0
    assert again["rows_duplicate"] == good
    assert [e["line"] for e in again["errors"]] == bad_lines
    assert await _count(database_url) == good


@pytest.fixture
async def keyed_client(database_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    settings = AnalyticsSettings(
        database_url=database_url,
        cache_type="memory",
        tracing_enabled=False,
        analytics_max_workers=1,
        upload_max_bytes=64 * 1024,
        upload_spool_dir=tmp_path / "spool",
        api_keys="k-one, k-two",
    )
    async for http in _client(settings):
        yield http


ONE_ROW = (HEADER + "2025-01-01T12:00:00Z,p1,b1,front,Granted\n").encode()


async def test_uploads_need_an_api_key_when_keys_are_set(keyed_client: Client, database_url: str) -> None:
    files = {"file": ("events.csv", ONE_ROW, "text/csv")}
    missing = await keyed_client.post("/api/v1/uploads", files=files)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    wrong = await keyed_client.post("/api/v1/uploads", files=files, headers={"X-API-Key": "k-three"})
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    near = await keyed_client.post("/api/v1/uploads", files=files, headers={"X-API-Key": "k-one "})
    assert near.status_code == 403
    assert await _count(database_url) == 0
    good = await keyed_client.post("/api/v1/uploads", files=files, headers={"X-API-Key": "k-two"})
    assert good.status_code == 201, good.text
    assert await _count(database_url) == 1


async def test_an_oversized_upload_is_refused_while_it_streams(keyed_client: Client, tmp_path: Path) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes as they arrive, the rest of
    the body is never read and the spool file is gone afterwards."""
    boundary = "xyzzy"
    sent = 0
    chunk = b"2025-01-01T12:00:00Z,p1,b1,front,Granted\n" * 400  # 16.8 KB

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n" + HEADER
        ).encode()
        yield head
        for _ in range(600):  # 10 MB offered against a 64 KiB limit
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    answer = await keyed_client.post(
        "/api/v1/uploads",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}", "X-API-Key": "k-one"},
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["details"] == {"max_bytes": 64 * 1024}
    assert sent < 200 * 1024
    assert list((tmp_path / "spool").iterdir()) == []


async def test_a_spool_that_cannot_be_created_is_a_clean_503(database_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    settings = AnalyticsSettings(
        database_url=database_url,
        cache_type="memory",
        tracing_enabled=False,
        analytics_max_workers=1,
        upload_spool_dir=blocker / "spool",
    )
    async for http in _client(settings):
        answer = await http.post("/api/v1/uploads", files={"file": ("e.csv", ONE_ROW, "text/csv")})
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "spool_unavailable"
        assert str(tmp_path) not in answer.text
