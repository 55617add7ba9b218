"""`python -m services.optimizer`: watches the fleet and tunes it over the admin API."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.optimizer.settings import OptimizerSettings, get_settings
from shared.runner import run_service

if TYPE_CHECKING:
    from fastapi import FastAPI


def _create_app(settings: OptimizerSettings) -> FastAPI:
    from services.optimizer.app import create_app  # the web stack loads only once the settings are good

    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "optimizer",
        module="services.optimizer",
        description="Reads the fleet's signals and tunes analytics, the event processor and the "
        "replicator over their admin API (acts only with OPTIMIZER_ENABLED=true and ADMIN_TOKEN). "
        "Serves on HOST:OPTIMIZER_PORT.",
        settings=get_settings,
        app_factory=_create_app,
        port=lambda s: s.optimizer_port,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
