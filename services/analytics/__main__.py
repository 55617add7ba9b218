"""`python -m services.analytics`: patterns, summary and anomalies, uploads, performance intake."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.analytics.settings import AnalyticsSettings, get_settings
from shared.runner import run_service

if TYPE_CHECKING:
    from fastapi import FastAPI


def _require(settings: AnalyticsSettings) -> None:
    settings.require_database_url()


def _create_app(settings: AnalyticsSettings) -> FastAPI:
    from services.analytics.app import create_app  # the web stack loads only once the settings are good

    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "analytics",
        module="services.analytics",
        description="Security analytics over the stored access events (patterns, summary, anomalies) "
        "behind a multi-tier cache, CSV uploads and performance intake. Serves on HOST:ANALYTICS_PORT.",
        settings=get_settings,
        app_factory=_create_app,
        port=lambda s: s.analytics_port,
        require=_require,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
