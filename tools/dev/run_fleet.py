"""`make run`: the whole fleet on one machine, no Docker, nothing pre-installed.

Starts embedded PostgreSQL and the Tansu broker for the settings that are unset, applies the
migrations, then hands the services to honcho (a Procfile runner) which multiplexes their
output and stops them all on Ctrl-C; the embedded servers are stopped last.

The event processor runs as its own process (`python -m services.gateway.event_processor`) and
the gateway with `GATEWAY_RUN_EVENT_PROCESSOR=false`: in one process the two shared one core,
and HTTP ingestion waited behind the processor's parsing (`bench ingest_http` measures it).

The broker keeps its log on disk under the data directory (`--broker-storage disk`, the
default), so events answered 202 but not yet stored are still there after a stop or a crash;
`--broker-storage memory` trades that for speed (docs/reference.md gives the measured cost).
On a terminal the services log readable lines instead of JSON (unless LOG_FORMAT is set).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from shared.db import apply_migrations, ensure_database, with_database
from shared.settings import REPO_ROOT, FleetSettings
from tools.dev.embedded import EmbeddedKafka, EmbeddedPostgres

log = logging.getLogger("run_fleet")

DATA_DIR = REPO_ROOT / ".data"
PRIMARY_DB = "sentinel"
REPLICA_DB = "sentinel_replica"

SERVICES = {
    "gateway": "services.gateway",
    "processor": "services.gateway.event_processor",
    "analytics": "services.analytics",
    "optimizer": "services.optimizer",
    "replicator": "services.replicator",
}

# On top of the shared environment: the processor has its own process here.
SERVICE_ENV = {"gateway": {"GATEWAY_RUN_EVENT_PROCESSOR": "false"}}


def prepare_infrastructure(
    stack: ExitStack, settings: FleetSettings, data_dir: Path, *, durable_broker: bool = True
) -> dict[str, str]:
    """Start what is missing and return the environment that points every service at it."""
    env: dict[str, str] = {}
    database_url = settings.database_url
    if not database_url:
        pg = stack.enter_context(EmbeddedPostgres(data_dir / "postgres", port=55432))
        asyncio.run(ensure_database(pg.dsn, PRIMARY_DB))
        database_url = with_database(pg.dsn, PRIMARY_DB)
        print(f"embedded PostgreSQL: {database_url}", flush=True)
    timescale_url = settings.timescale_url
    if not timescale_url:
        asyncio.run(ensure_database(database_url, REPLICA_DB))
        timescale_url = with_database(database_url, REPLICA_DB)
    bootstrap = settings.kafka_bootstrap_servers
    if not bootstrap:
        data_dir.mkdir(parents=True, exist_ok=True)
        kafka = stack.enter_context(
            EmbeddedKafka(
                port=59092,
                log_path=data_dir / "tansu.log",
                storage_dir=data_dir / "broker" if durable_broker else None,
            )
        )
        bootstrap = kafka.bootstrap_servers
        print(f"embedded Kafka broker: {bootstrap} (log: {kafka.storage_engine})", flush=True)
    asyncio.run(apply_migrations(database_url, "primary"))
    asyncio.run(apply_migrations(timescale_url, "replica"))
    env["DATABASE_URL"] = database_url
    env["TIMESCALE_URL"] = timescale_url
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return env


def child_log_format(environ: Mapping[str, str], stdout: TextIO) -> str:
    """The services write into honcho's pipe, not the terminal, so `auto` is decided here:
    readable lines when `make run` runs on a terminal, JSON lines when its output is captured."""
    chosen = environ.get("LOG_FORMAT", "auto").strip().lower() or "auto"
    if chosen != "auto":
        return chosen
    return "console" if stdout.isatty() else "json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DATA_DIR,
        help="where the embedded database and broker keep their files (default: .data/)",
    )
    parser.add_argument(
        "--broker-storage",
        choices=("disk", "memory"),
        default="disk",
        help="where the embedded broker keeps its log: disk survives a stop or crash, memory is "
        "faster and forgets (default: disk)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s run_fleet %(message)s")

    from honcho.manager import Manager
    from honcho.printer import Printer

    settings = FleetSettings()
    with ExitStack() as stack:
        env = prepare_infrastructure(
            stack, settings, args.data_dir, durable_broker=args.broker_storage == "disk"
        )
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        child_env["LOG_FORMAT"] = child_log_format(os.environ, sys.stdout)
        manager = Manager(Printer(sys.stdout))
        for name, module in SERVICES.items():
            manager.add_process(
                name,
                f"{sys.executable} -m {module}",
                env={**child_env, **SERVICE_ENV.get(name, {})},
                cwd=str(REPO_ROOT),
            )
        urls = {
            "gateway": settings.gateway_url,
            "processor": f"http://{settings.host}:{settings.event_processor_port}",
            "analytics": settings.analytics_url,
            "optimizer": settings.optimizer_url,
            "replicator": settings.replicator_url,
        }
        print("Sentinel Fleet starting:", flush=True)
        for name, url in urls.items():
            print(f"  {name:<11} {url}  (docs: {url}/docs)", flush=True)
        print(f"  breakers    {settings.gateway_url}/breaker\nCtrl-C stops everything.", flush=True)
        manager.loop()
        return int(manager.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
