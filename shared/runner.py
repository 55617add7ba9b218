"""How every service process starts: JSON logs, tracing, then uvicorn on HOST and its port."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from shared.json_logging import configure_logging
from shared.settings import FleetSettings
from shared.tracing import init_tracing


def serve(service: str, app_factory: Callable[[], FastAPI], settings: FleetSettings, *, port: int) -> None:
    configure_logging(service, settings.log_level)
    init_tracing(service, settings)  # before the app exists, so its requests are traced
    app = app_factory()
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
