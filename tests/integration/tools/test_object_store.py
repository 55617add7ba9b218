"""The durable store of the embedded broker: the S3 semantics Tansu relies on, and hostile requests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from aiohttp.test_utils import TestServer

from shared.settings import REPO_ROOT
from tools.dev.embedded import free_port
from tools.dev.object_store import FileObjectStore, build_app

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def parse(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text)  # noqa: S314 - the answer of the test's own loopback server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    server = TestServer(build_app(FileObjectStore(tmp_path / "root")), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("/")), timeout=10) as client:
            assert (await client.put("/tansu")).status_code == 200
            yield client
    finally:
        await server.close()


async def test_conditional_writes_as_tansu_uses_them(store: httpx.AsyncClient) -> None:
    created = await store.put("/tansu/a/watermark.json", content=b"1", headers={"If-None-Match": "*"})
    assert created.status_code == 200
    etag = created.headers["ETag"]
    # Create-if-absent refuses a second create; nothing is overwritten.
    again = await store.put("/tansu/a/watermark.json", content=b"x", headers={"If-None-Match": "*"})
    assert again.status_code == 412
    # Update-if-unchanged: the right ETag wins once, the stale one then loses.
    updated = await store.put("/tansu/a/watermark.json", content=b"2", headers={"If-Match": etag})
    assert updated.status_code == 200
    stale = await store.put("/tansu/a/watermark.json", content=b"3", headers={"If-Match": etag})
    assert stale.status_code == 412
    got = await store.get("/tansu/a/watermark.json")
    assert (got.status_code, got.content, got.headers["ETag"]) == (200, b"2", updated.headers["ETag"])
    assert "Last-Modified" in got.headers


async def test_a_key_can_be_an_object_and_a_prefix(store: httpx.AsyncClient) -> None:
    assert (await store.put("/tansu/groups/consumers", content=b"p")).status_code == 200
    assert (await store.put("/tansu/groups/consumers/g1.json", content=b"c")).status_code == 200
    assert (await store.get("/tansu/groups/consumers")).content == b"p"
    listing = await store.get("/tansu", params={"list-type": "2", "prefix": "groups/consumers/"})
    keys = [e.text for e in parse(listing.text).iter(f"{NS}Key")]
    assert keys == ["groups/consumers/g1.json"]
    folded = await store.get("/tansu", params={"list-type": "2", "prefix": "groups/", "delimiter": "/"})
    root = parse(folded.text)
    assert [e.text for e in root.iter(f"{NS}Key")] == ["groups/consumers"]
    common = [p.text for c in root.iter(f"{NS}CommonPrefixes") for p in c.iter(f"{NS}Prefix")]
    assert common == ["groups/consumers/"]


async def test_ranges_and_missing_objects(store: httpx.AsyncClient) -> None:
    await store.put("/tansu/r", content=b"0123456789")
    assert (await store.get("/tansu/r", headers={"Range": "bytes=2-4"})).content == b"234"
    assert (await store.get("/tansu/r", headers={"Range": "bytes=-3"})).content == b"789"
    assert (await store.get("/tansu/r", headers={"Range": "bytes=8-"})).content == b"89"
    for bad in ("bytes=20-30", "bytes=abc", "bytes=-", "items=1-2", "bytes=5-2"):
        assert (await store.get("/tansu/r", headers={"Range": bad})).status_code == 416, bad
    missing = await store.get("/tansu/nothing-here")
    assert missing.status_code == 404
    assert "<Code>NoSuchKey</Code>" in missing.text
    assert (await store.get("/other-bucket/x")).status_code == 404


@pytest.mark.parametrize(
    "path",
    # Percent-encoded, since the client itself resolves plain dot segments before sending.
    [
        "/%2E%2E/escape",
        "/tansu/%2E%2E",
        "/tansu/%2E",
        "/tansu/.tmp-x",
        "/UPPER/x",
        "/a/x",
        "/tansu/a%00b",
    ],
)
async def test_hostile_paths_are_refused_and_write_nothing_outside(
    store: httpx.AsyncClient, path: str, tmp_path: Path
) -> None:
    response = await store.put(path, content=b"evil")
    assert response.status_code in (400, 404), (path, response.status_code)
    assert not (tmp_path / "escape").exists()
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["tansu"]


def test_a_second_store_on_the_same_directory_refuses_to_start(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tools.dev.object_store", "--root", str(tmp_path / "root"), "--port"]
    first = subprocess.Popen([*command, str(free_port())], cwd=REPO_ROOT)
    try:
        port = free_port()
        deadline = time.monotonic() + 20
        second = None
        while time.monotonic() < deadline:
            if (tmp_path / "root" / ".lock").exists():
                second = subprocess.run(
                    [*command, str(port)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
                )
                if second.returncode != 0 or first.poll() is not None:
                    break
            time.sleep(0.1)
        assert second is not None
        assert second.returncode == 1
        assert "another store serves" in second.stderr
        assert first.poll() is None  # the first one keeps serving
    finally:
        first.terminate()
        first.wait(timeout=10)
