"""An upload that needs a new database connection while the name server is slow or failing.

A lost DNS query is sent again by the system resolver only after its timeout (5 s by default),
so a connection's budget must outlast it; a name the resolver failed to resolve for now
(EAI_AGAIN) is asked again within that budget; and when the database really cannot be reached
in time, the answer is a 503 with Retry-After, never a 500.
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


# A name only this test's resolver knows (RFC 2606 reserves `.test`), standing for the database's
# real host, so every new connection resolves a name whatever address the database is on.
DATABASE_NAME = "fleet-database.test"
_REAL_HOST: dict[str, str] = {}


def _by_name(dsn: str) -> str:
    """The DSN with its host replaced by DATABASE_NAME."""
    parts = urlsplit(dsn)
    assert parts.hostname, f"the test database must be reached over TCP, not {dsn!r}"
    _REAL_HOST[DATABASE_NAME] = parts.hostname
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + DATABASE_NAME + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class SlowResolver:
    """socket.getaddrinfo for DATABASE_NAME as a resolver whose first query was lost: each call
    answers (with the real host's addresses) after `delay_s`, or fails with `error`; other names
    are untouched."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.error: OSError | None = None
        self.calls = 0
        self.failing_calls: int | None = None
        self._lock = threading.Lock()
        self._real: Callable[..., Any] = socket.getaddrinfo

    def lose(
        self, delay_s: float = 0.0, error: OSError | None = None, failing_calls: int | None = None
    ) -> None:
        """From now on answer after `delay_s`, or fail with `error` (the first `failing_calls`
        calls only, when given); calls are counted from here."""
        self.delay_s, self.error, self.calls, self.failing_calls = delay_s, error, 0, failing_calls

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (DATABASE_NAME, DATABASE_NAME.encode()):
            with self._lock:
                self.calls += 1
                call = self.calls
            time.sleep(self.delay_s)  # a blocking resolver, as glibc's is (it runs in a thread)
            if self.error is not None and (self.failing_calls is None or call <= self.failing_calls):
                raise self.error
            host = _REAL_HOST[DATABASE_NAME]
        return self._real(host, *args, **kwargs)


def _resolving(monkeypatch: pytest.MonkeyPatch) -> SlowResolver:
    """A resolver that knows DATABASE_NAME, installed for the whole test (the app starts through it)."""
    resolver = SlowResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


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
    resolver = _resolving(monkeypatch)
    async for http in _app(database_url, tmp_path):
        resolver.lose(delay_s=LOST_QUERY_S)
        began = time.monotonic()
        answer = await _upload(http)
        took = time.monotonic() - began
        assert resolver.calls >= 1  # the upload did open a connection through the slow lookup
        assert answer.status_code == 201, answer.text
        assert answer.json()["rows_inserted"] == 1
        assert took >= LOST_QUERY_S


async def test_a_connection_not_made_in_time_is_a_503_with_retry_after(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.db, "CONNECT_TIMEOUT_S", 0.5)
    resolver = _resolving(monkeypatch)
    async for http in _app(database_url, tmp_path):
        resolver.lose(delay_s=1.0)
        answer = await _upload(http)
        assert resolver.calls >= 1
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "dependency_unavailable"
        assert answer.json()["error"]["details"] == {"dependency": "database"}


_FOR_NOW = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


async def test_a_name_that_fails_to_resolve_for_now_is_asked_again(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolver gave up on lost queries (EAI_AGAIN) before the connection's budget was spent:
    asking again a moment later resolves, and the upload goes through."""
    resolver = _resolving(monkeypatch)
    async for http in _app(database_url, tmp_path):
        resolver.lose(delay_s=0.5, error=_FOR_NOW, failing_calls=1)
        answer = await _upload(http)
        assert resolver.calls >= 2
        assert answer.status_code == 201, answer.text
        assert answer.json()["rows_inserted"] == 1


async def test_a_name_that_keeps_failing_to_resolve_is_a_503_within_the_budget(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.db, "CONNECT_TIMEOUT_S", 1.0)
    resolver = _resolving(monkeypatch)
    async for http in _app(database_url, tmp_path):
        resolver.lose(error=_FOR_NOW)
        began = time.monotonic()
        answer = await _upload(http)
        assert time.monotonic() - began < 10  # one budget for every try, per connection
        assert resolver.calls >= 2
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "dependency_unavailable"


async def test_a_database_name_that_does_not_exist_is_a_503_at_once(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = _resolving(monkeypatch)
    async for http in _app(database_url, tmp_path):
        resolver.lose(error=socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        began = time.monotonic()
        answer = await _upload(http)
        assert time.monotonic() - began < 5
        assert resolver.calls >= 1
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "dependency_unavailable"
