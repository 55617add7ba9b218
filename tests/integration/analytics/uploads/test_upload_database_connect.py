"""An upload that needs a new database connection while the name server is slow or failing.

A lost DNS query is sent again by the system resolver only after its timeout (5 s by default),
so a connection's budget must outlast it; and when the database really cannot be reached in
time, the answer is a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import shared.db
from services.analytics.settings import AnalyticsSettings
from tests.integration.analytics.test_api import Client, _client

pytestmark = pytest.mark.integration

HEADER = "Timestamp,Person ID,Token ID,Device name,Access result\n"
ONE_ROW = (HEADER + "2025-01-01T12:00:00Z,p1,b1,front,Granted\n").encode()
# The system resolver's retransmission interval (resolv.conf `timeout`, default 5 s), and a bit.
LOST_QUERY_S = 5.3


def _by_name(dsn: str) -> str:
    """The DSN with its loopback address as a name, so every new connection resolves it."""
    parts = urlsplit(dsn)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip(f"the test database is not on a loopback TCP address ({parts.hostname!r})")
    netloc = parts.netloc.replace("127.0.0.1", "localhost")
    return urlunsplit(parts._replace(netloc=netloc))


class SlowResolver:
    """socket.getaddrinfo for `localhost` as a resolver whose first query was lost: each call
    answers after `delay_s` (or fails with `error`); other names are untouched."""

    def __init__(self, delay_s: float = 0.0, error: OSError | None = None) -> None:
        self.delay_s = delay_s
        self.error = error
        self.calls = 0
        self._lock = threading.Lock()
        self._real: Callable[..., Any] = socket.getaddrinfo

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("localhost", b"localhost"):
            with self._lock:
                self.calls += 1
            time.sleep(self.delay_s)  # a blocking resolver, as glibc's is (it runs in a thread)
            if self.error is not None:
                raise self.error
        return self._real(host, *args, **kwargs)


async def _app(database_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    settings = AnalyticsSettings(
        database_url=_by_name(database_url),
        cache_type="memory",
        tracing_enabled=False,
        analytics_max_workers=1,
        upload_spool_dir=tmp_path / "spool",
    )
    async for http in _client(settings):
        # Every connection the pool holds is closed: the upload must open new ones.
        await http.app.state.pool.expire_connections()
        yield http


async def _upload(http: Client) -> Any:
    return await http.post("/api/v1/uploads", files={"file": ("e.csv", ONE_ROW, "text/csv")})


async def test_a_new_connection_outlasts_one_lost_dns_query(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for http in _app(database_url, tmp_path):
        resolver = SlowResolver(delay_s=LOST_QUERY_S)
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        began = time.monotonic()
        answer = await _upload(http)
        took = time.monotonic() - began
        monkeypatch.undo()
        assert resolver.calls >= 1  # the upload did open a connection through the slow lookup
        assert answer.status_code == 201, answer.text
        assert answer.json()["rows_inserted"] == 1
        assert took >= LOST_QUERY_S


async def test_a_connection_not_made_in_time_is_a_503_with_retry_after(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.db, "CONNECT_TIMEOUT_S", 0.5)
    async for http in _app(database_url, tmp_path):
        resolver = SlowResolver(delay_s=1.0)
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        answer = await _upload(http)
        monkeypatch.undo()
        assert resolver.calls >= 1
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "dependency_unavailable"
        assert answer.json()["error"]["details"] == {"dependency": "database"}


async def test_a_database_name_that_does_not_resolve_is_a_503(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for http in _app(database_url, tmp_path):
        failure = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        resolver = SlowResolver(error=failure)
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        answer = await _upload(http)
        monkeypatch.undo()
        assert resolver.calls >= 1
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "dependency_unavailable"
