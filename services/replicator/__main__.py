"""`python -m services.replicator [--once]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from services.replicator.app import create_app
from services.replicator.service import ReplicatorService
from services.replicator.settings import ReplicatorSettings, get_settings
from shared.json_logging import configure_logging
from shared.runner import serve

log = logging.getLogger("services.replicator")


async def _once(settings: ReplicatorSettings) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.replicator", description=__doc__)
    parser.add_argument("--once", action="store_true", help="one catch-up to the current end, then exit 0")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.once:
        configure_logging("replicator", settings.log_level)
        try:
            asyncio.run(_once(settings))
        except Exception as exc:
            log.error("replication catch-up failed: %s", exc)
            return 1
        return 0
    serve("replicator", lambda: create_app(settings), settings, port=settings.replication_metrics_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
