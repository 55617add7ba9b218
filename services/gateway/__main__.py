"""`python -m services.gateway`: the gateway (ingestion, proxy, breakers; hosts the event processor)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.gateway.routes_table import RouteConfigError
from services.gateway.settings import GatewaySettings, get_settings
from shared.runner import load_settings, prepare_app, run_service

if TYPE_CHECKING:
    from fastapi import FastAPI


def _require(settings: GatewaySettings) -> None:
    settings.require_kafka()
    if settings.run_event_processor:
        settings.require_database_url()


def _create_app(settings: GatewaySettings) -> FastAPI:
    from services.gateway.app import create_app  # the web stack loads only once the settings are good

    return create_app(settings)


PROG = "python -m services.gateway"


def worker_app() -> FastAPI:
    """The app of one worker process when GATEWAY_WORKERS > 1 (uvicorn imports this by name)."""
    settings = load_settings(PROG, get_settings, _require)
    return prepare_app("gateway", lambda: _create_app(settings), settings, config_errors=(RouteConfigError,))


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "gateway",
        module="services.gateway",
        description="The fleet's front door: event ingestion, the proxy with circuit breakers, and "
        "the event processor unless GATEWAY_RUN_EVENT_PROCESSOR=false. Serves on HOST:GATEWAY_PORT.",
        settings=get_settings,
        app_factory=_create_app,
        port=lambda s: s.gateway_port,
        require=_require,
        config_errors=(RouteConfigError,),
        argv=argv,
        workers=lambda s: s.workers,
        worker_app="services.gateway.__main__:worker_app",
    )


if __name__ == "__main__":
    sys.exit(main())
