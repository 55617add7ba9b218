"""How every service process starts: its command line, its settings, logs, tracing, then uvicorn.

`run_service` is the whole `python -m services.X`: `--help` prints usage and exits; a setting
that is invalid or missing ends the process with one line per setting on stderr, naming it
(exit code 2), before anything else runs; otherwise logs and tracing are set up and uvicorn
serves the app on HOST and the service's port.
"""

from __future__ import annotations

import argparse
import sys
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
) -> int:
    """`python -m <module>`: parse the command line, check the settings, serve until stopped."""
    prog = f"python -m {module}"
    command_parser(module, description).parse_args(argv)
    loaded = load_settings(prog, settings, require)
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
    import uvicorn

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
    uvicorn.run(
        app,
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        # uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS);
        # which proxies are trusted is the gateway's TRUSTED_PROXIES setting, unset = none.
        proxy_headers=False,
        loop="uvloop",
        http="httptools",
    )
