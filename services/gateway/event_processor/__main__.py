"""`python -m services.gateway.event_processor`: the event processor alone, to scale it out."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.gateway.event_processor.settings import EventProcessorSettings, get_settings
from shared.runner import run_service

if TYPE_CHECKING:
    from fastapi import FastAPI


def _require(settings: EventProcessorSettings) -> None:
    settings.require_kafka()
    settings.require_database_url()


def _create_app(settings: EventProcessorSettings) -> FastAPI:
    from services.gateway.event_processor.app import (
        create_app,  # the web stack loads only once the settings are good
    )

    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "event_processor",
        module="services.gateway.event_processor",
        description="Consumes access events from Kafka and stores each exactly once in PostgreSQL. "
        "Serves health, metrics and tuning on HOST:EVENT_PROCESSOR_PORT.",
        settings=get_settings,
        app_factory=_create_app,
        port=lambda s: s.event_processor_port,
        require=_require,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
