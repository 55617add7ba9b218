"""Index advice for the fleet's databases.

    python -m services.optimizer.index_cli analyze [--json]
    python -m services.optimizer.index_cli create TABLE COLUMN [COLUMN...] [--dry-run]

The database is DATABASE_URL (or --database-url). Table and column names are checked against
the catalog and quoted; anything else is refused with exit code 2 and nothing is run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from services.optimizer.index_optimizer import IdentifierError, IndexOptimizer
from shared.runner import load_settings
from shared.settings import FleetSettings


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _print_report(report: dict[str, Any]) -> None:
    print("Indexes (scans since statistics reset):")
    for ix in report["indexes"]:
        print(f"  {ix['table']}.{ix['index']:<45} scans {ix['scans']:>10}  size {_size(ix['size_bytes']):>9}")
    print("\nUnused (never scanned, enforce no constraint):")
    for ix in report["unused"] or [{"table": "-", "index": "none", "size_bytes": 0}]:
        print(f"  {ix['table']}.{ix['index']}  {_size(ix['size_bytes'])}")
    print("\nDuplicates (same columns, same kind):")
    for dup in report["duplicates"] or [{"table": "-", "indexes": ["none"]}]:
        print(f"  {dup['table']}: {', '.join(dup['indexes'])}")
    print("\nRedundant (a prefix of another index):")
    for red in report["redundant_prefix"] or [{"table": "-", "index": "none", "covered_by": "-"}]:
        print(f"  {red['table']}.{red['index']} covered by {red['covered_by']}")
    print("\nRecommended new indexes:")
    if not report["recommendations"]:
        print("  none: no large sequential scan among the queries examined")
    for rec in report["recommendations"]:
        print(f"  {rec['table']} ({', '.join(rec['columns'])})  from {rec['source']}")
        print(f"    why: {rec['reason']}")
        print(f"    run: {rec['create_command']}")


async def _analyze(optimizer: IndexOptimizer, as_json: bool) -> int:
    report = await optimizer.analyze_index_usage()
    report["recommendations"] = [r.as_dict() for r in await optimizer.recommend_new_indexes()]
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
    return 0


async def _create(optimizer: IndexOptimizer, table: str, columns: list[str], dry_run: bool) -> int:
    sql = await optimizer.create_index(table, columns, dry_run=dry_run)
    print(("would run: " if dry_run else "created: ") + sql)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.optimizer.index_cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    parser.add_argument("--schema", default="public", help="schema of the tables (default: public)")
    commands = parser.add_subparsers(dest="command", required=True)
    analyze = commands.add_parser(
        "analyze", help="index usage, unused and duplicate indexes, recommendations"
    )
    analyze.add_argument("--json", action="store_true", help="machine-readable output")
    create = commands.add_parser("create", help="build an index CONCURRENTLY IF NOT EXISTS")
    create.add_argument("table", help="table to index (checked against the catalog)")
    create.add_argument("columns", nargs="+", metavar="COLUMN", help="indexed columns, in order")
    create.add_argument("--dry-run", action="store_true", help="print the statement, run nothing")
    args = parser.parse_args(argv)

    dsn = (
        args.database_url
        or load_settings("python -m services.optimizer.index_cli", FleetSettings).database_url
    )
    if not dsn:
        print("error: set DATABASE_URL or pass --database-url", file=sys.stderr)
        return 2
    try:
        optimizer = IndexOptimizer(dsn, schema=args.schema)
        if args.command == "analyze":
            return asyncio.run(_analyze(optimizer, args.json))
        return asyncio.run(_create(optimizer, args.table, args.columns, args.dry_run))
    except IdentifierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as exc:
        print(f"error: cannot reach the database: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
