"""`python -m services.replicator [--once]`: PostgreSQL -> TimescaleDB replication."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from services.replicator.settings import ReplicatorSettings, get_settings
from shared.runner import command_parser, load_settings, serve

MODULE = "services.replicator"

log = logging.getLogger("services.replicator")


async def _once(settings: ReplicatorSettings) -> int:
    from services.replicator.service import ReplicatorService

    service = ReplicatorService(settings)
    await service.open()
    try:
        inserted = await service.run_once()
    finally:
        await service.close()
    status = service.status()
    log.info(
        "replication catch-up done: %d rows inserted",
        inserted,
        extra={"rows_inserted": inserted, "watermark": status.watermark.model_dump()},
    )
    return inserted


def _require(settings: ReplicatorSettings) -> None:
    settings.require_database_url()
    settings.require_timescale_url()


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        MODULE,
        "Copies new access events from DATABASE_URL to TIMESCALE_URL and reports the lag. "
        "Serves health, metrics and status on HOST:REPLICATION_METRICS_PORT.",
    )
    parser.add_argument("--once", action="store_true", help="one catch-up to the current end, then exit 0")
    args = parser.parse_args(argv)
    settings = load_settings(f"python -m {MODULE}", get_settings, _require)
    if args.once:
        from shared.json_logging import configure_logging

        configure_logging("replicator", settings.log_level, settings.log_format)
        try:
            asyncio.run(_once(settings))
        except Exception as exc:
            log.error("replication catch-up failed: %s", exc)
            return 1
        return 0
    from services.replicator.app import create_app  # the web stack loads once the settings are good

    serve(
        "replicator",
        lambda: create_app(settings),
        settings,
        port=settings.replication_metrics_port,
        prog=f"python -m {MODULE}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
