"""How every service process starts: its command line, its settings, logs, tracing, then uvicorn.

`run_service` is the whole `python -m services.X`: `--help` prints usage and exits; a setting
that is invalid or missing ends the process with one line per setting on stderr, naming it
(exit code 2), before anything else runs; otherwise logs and tracing are set up and uvicorn
serves the app on HOST and the service's port.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from shared.settings import FleetSettings, MissingSetting

if TYPE_CHECKING:
    from fastapi import FastAPI

# The web stack is imported only once the command line and the settings are known good, so
# `--help` and a bad setting answer at once instead of after seconds of imports.

S = TypeVar("S", bound=FleetSettings)

USAGE_ERROR = 2
SETTINGS_EPILOG = (
    "Settings are read from environment variables and from .env in the working directory "
    "(docs/reference.md lists them)."
)
# Values of these settings are never echoed: they may hold a password or a key.
_SECRET_WORDS = ("URL", "TOKEN", "KEY", "PASSWORD", "SECRET")


def command_parser(module: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, epilog=SETTINGS_EPILOG
    )


def describe_settings_error(exc: ValidationError) -> Iterator[str]:
    """One line per bad setting: its variable name, what is wrong, and the value unless secret."""
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        line = f"invalid setting {name}: {error['msg']}"
        if not any(word in name.upper() for word in _SECRET_WORDS) and "input" in error:
            line += f" (got {error['input']!r:.80})"
        yield line


def load_settings(prog: str, factory: Callable[[], S], require: Callable[[S], object] | None = None) -> S:
    """The settings, or exit with code 2 after one line per invalid or missing setting."""
    try:
        settings = factory()
        if require is not None:
            require(settings)
    except ValidationError as exc:
        for line in describe_settings_error(exc):
            print(f"{prog}: {line}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    except MissingSetting as exc:
        print(f"{prog}: missing setting {exc.setting}: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    return settings


def run_service(
    service: str,
    *,
    module: str,
    description: str,
    settings: Callable[[], S],
    app_factory: Callable[[S], FastAPI],
    port: Callable[[S], int],
    require: Callable[[S], object] | None = None,
    config_errors: tuple[type[Exception], ...] = (),
    argv: Sequence[str] | None = None,
    workers: Callable[[S], int] | None = None,
    worker_app: str | None = None,
) -> int:
    """`python -m <module>`: parse the command line, check the settings, serve until stopped.

    With `workers` above 1, `worker_app` ("module:function") builds the app in each worker
    process (see `serve_workers`)."""
    prog = f"python -m {module}"
    command_parser(module, description).parse_args(argv)
    loaded = load_settings(prog, settings, require)
    count = workers(loaded) if workers else 1
    if count > 1 and worker_app:
        serve_workers(
            service,
            lambda: app_factory(loaded),
            loaded,
            port=port(loaded),
            workers=count,
            worker_app=worker_app,
            config_errors=config_errors,
            prog=prog,
        )
        return 0
    serve(
        service,
        lambda: app_factory(loaded),
        loaded,
        port=port(loaded),
        config_errors=config_errors,
        prog=prog,
    )
    return 0


def serve(
    service: str,
    app_factory: Callable[[], FastAPI],
    settings: FleetSettings,
    *,
    port: int,
    config_errors: tuple[type[Exception], ...] = (),
    prog: str | None = None,
) -> None:
    _uvicorn(
        prepare_app(service, app_factory, settings, config_errors=config_errors, prog=prog),
        settings.host,
        port,
    )


def _uvicorn(app: FastAPI | str, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        factory=isinstance(app, str),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        # uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS);
        # which proxies are trusted is the gateway's TRUSTED_PROXIES setting, unset = none.
        proxy_headers=False,
        loop="uvloop",
        http="httptools",
    )


def prepare_app(
    service: str,
    app_factory: Callable[[], FastAPI],
    settings: FleetSettings,
    *,
    config_errors: tuple[type[Exception], ...] = (),
    prog: str | None = None,
) -> FastAPI:
    """Logs and tracing set up, then the app; a wrong config file ends the process (code 2)."""
    from shared.breaker import BreakerConfigError
    from shared.json_logging import configure_logging
    from shared.performance.config import MonitoringConfigError
    from shared.tracing import init_tracing

    configure_logging(service, settings.log_level, settings.log_format)
    init_tracing(service, settings)  # before the app exists, so its requests are traced
    # Config files named by a setting: a wrong value there is a start-up error, not a crash.
    config_error_types: tuple[type[Exception], ...] = (
        BreakerConfigError,
        MonitoringConfigError,
        *config_errors,
    )
    try:
        app = app_factory()
    except config_error_types as exc:
        message = " ".join(str(exc).split())
        print(f"{prog or service}: invalid configuration: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    freeze_startup_objects()
    return app


# Collections of the youngest generation after this many more container objects were made than
# freed (CPython's default is 700). A service's requests make many short-lived objects that
# reference counting frees; what keeps them alive between collections is the requests in flight
# (50 concurrent ingest requests of 100 events hold tens of thousands), which every collection
# walks again and promotes. Measured in the gateway under `bench ingest_http` load (CPU time
# in `gc.callbacks`): 700 spent about 0.7 s of CPU per 10 s in the collector, 10,000 about 0.1 s,
# with about 10 % more events per second. Cyclic garbage still goes, a little later: at most
# this many objects' worth of it waits.
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_startup_objects(young_threshold: int = YOUNG_COLLECTION_THRESHOLD) -> None:
    """Set the collector for a service process: objects alive after start-up out of its sight,
    and the youngest generation collected less often (`young_threshold`; a service whose unit of
    work holds more objects at once, like the event processor's batches, passes its own).

    A full collection walks every tracked object; a service holds over 100k of them from its
    imports alone (modules, classes, schemas, the app's routes), none of which ever becomes
    garbage. Under ingest load the gateway ran about one full collection a second at about
    70 ms of CPU each; frozen, they are skipped (about 15 ms each). Garbage made before is
    collected first; objects made later are collected as ever. Only for service processes: a
    test process building many apps would keep each one's cycles."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)


def serve_workers(
    service: str,
    app_factory: Callable[[], FastAPI],
    settings: FleetSettings,
    *,
    port: int,
    workers: int,
    worker_app: str,
    config_errors: tuple[type[Exception], ...] = (),
    prog: str | None = None,
) -> None:
    """`workers` processes (uvicorn's supervisor) accepting on one listening socket.

    The app is built once here, only so a wrong configuration ends start-up with its message;
    each worker then builds its own from `worker_app`. Everything in-process is per worker
    (breakers, caches, budgets); metrics go through prometheus_client's multiprocess mode, in a
    directory made here (unless PROMETHEUS_MULTIPROC_DIR is set) and removed at exit, so one
    scrape of /metrics covers every worker."""
    prepare_app(service, app_factory, settings, config_errors=config_errors, prog=prog)
    own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{service}-metrics-")
    try:
        _uvicorn(worker_app, settings.host, port, workers)
    finally:
        if own_dir:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
