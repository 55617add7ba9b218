"""`python -m shared.migrate`: apply the schema migrations, then exit (compose `migrate`, Kubernetes Job).

Applies the `primary` migrations to DATABASE_URL and the `replica` migrations to TIMESCALE_URL
(both read from the environment / `.env` like every service, or given on the command line).
Servers that are still starting are retried until `--wait` seconds have passed, so the one-shot
container can start together with the databases. Exit code 0 when every target is migrated,
1 when a target fails, 2 on a usage error or an invalid setting (one line naming it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence

import asyncpg

from shared.db import MigrationTarget, apply_migrations
from shared.runner import load_settings
from shared.settings import FleetSettings

log = logging.getLogger("shared.migrate")

# Errors that mean "the server is not accepting connections yet" rather than "the migration is wrong".
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


async def migrate_target(
    dsn: str, target: MigrationTarget, *, wait_s: float, retry_s: float = 1.0
) -> list[str]:
    """Apply `target`'s pending migrations at `dsn`, retrying connection errors for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await apply_migrations(dsn, target)
        except _TRANSIENT as exc:
            if time.monotonic() + retry_s > deadline:
                raise
            log.info("%s database not reachable yet (%s); retrying", target, exc)
            await asyncio.sleep(retry_s)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.migrate",
        description="Apply the fleet's schema migrations to the primary and the replication database.",
    )
    parser.add_argument(
        "--target",
        choices=("all", "primary", "replica"),
        default="all",
        help="which database to migrate (default: both)",
    )
    parser.add_argument("--database-url", help="primary PostgreSQL (default: DATABASE_URL)")
    parser.add_argument("--timescale-url", help="replication target (default: TIMESCALE_URL)")
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying while a server refuses connections, up to this long (default: 60)",
    )
    return parser


async def _run(plan: list[tuple[MigrationTarget, str]], wait_s: float) -> int:
    failed = False
    for target, dsn in plan:
        try:
            applied = await migrate_target(dsn, target, wait_s=wait_s)
        except Exception as exc:
            log.error("migrating %s failed: %s: %s", target, type(exc).__name__, exc)
            failed = True
            continue
        if applied:
            log.info("%s: applied %s", target, ", ".join(applied))
        else:
            log.info("%s: schema up to date", target)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.wait < 0:
        parser.error("--wait must not be negative")
    settings = load_settings("python -m shared.migrate", FleetSettings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    plan: list[tuple[MigrationTarget, str]] = []
    if args.target in ("all", "primary"):
        dsn = args.database_url or settings.database_url
        if not dsn:
            parser.error("DATABASE_URL is not set and --database-url was not given")
        plan.append(("primary", dsn))
    if args.target in ("all", "replica"):
        dsn = args.timescale_url or settings.timescale_url
        if not dsn:
            parser.error("TIMESCALE_URL is not set and --timescale-url was not given")
        plan.append(("replica", dsn))
    return asyncio.run(_run(plan, args.wait))


if __name__ == "__main__":
    sys.exit(main())
