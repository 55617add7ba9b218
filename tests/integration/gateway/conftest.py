"""In-process HTTP servers (uvicorn on free ports, in the test's event loop) and gateway set-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from tools.dev.embedded import free_port


class LocalServer:
    """A real uvicorn server for `app` on 127.0.0.1; stop() and start() again on the same port."""

    def __init__(self, app: ASGIApp, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> LocalServer:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # as the fleet's runner: forwarded headers are the app's business
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)
        self._server = None
        self._task = None


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, port: int | None = None) -> AsyncIterator[LocalServer]:
    server = await LocalServer(app, port).start()
    try:
        yield server
    finally:
        await server.stop()


def write_breakers(tmp_path: Path, **breakers: dict[str, Any]) -> Path:
    """A breaker file for one test: quick waits so state changes happen within the test."""
    import yaml

    path = tmp_path / "circuit-breakers.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "failure_threshold": 3,
                    "wait_duration_in_open_state": 0.5,
                    "permitted_calls_in_half_open_state": 1,
                    "minimum_number_of_calls": 100,
                },
                "breakers": breakers,
            }
        )
    )
    return path


def write_routes(tmp_path: Path, upstream: str, **extra: Any) -> Path:
    import yaml

    path = tmp_path / "routes.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {
                        "prefix": "/api/v1/analytics",
                        "upstream": upstream,
                        "breaker": "analytics",
                        "timeout": 1.0,
                        "stale_for": 60,
                        **extra,
                    },
                ]
            }
        )
    )
    return path


class CuttableLink:
    """A TCP forwarder in front of PostgreSQL whose line can be cut and restored, to take the
    database away from one client without stopping the server other tests share."""

    def __init__(self, dsn: str) -> None:
        from urllib.parse import parse_qs, urlsplit, urlunsplit

        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        self._unix_path: str | None = None
        if parts.hostname:
            self._target = (parts.hostname, parts.port or 5432)
        else:
            socket_dir = query["host"][0]
            port = query.get("port", ["5432"])[0]
            self._unix_path = f"{socket_dir}/.s.PGSQL.{port}"
            self._target = ("", 0)
        self.port = free_port()
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        self.dsn = urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{self.port}", parts.path, "", ""))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
