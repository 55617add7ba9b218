"""`make bench` / `python -m bench [NAME ...] [--quick]`: run benchmarks, one JSON object per line.

Every module in this package that defines `run(quick: bool) -> dict` is a benchmark. A run
measures the target and its baseline in the same process run, so the ratio is meaningful on
whatever machine runs it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fleet's benchmarks.")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {discover()})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and durations, for a smoke run")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.names or discover():
        module = importlib.import_module(f"bench.{name}")
        started = time.time()
        try:
            result = module.run(quick=args.quick)
            result = {"benchmark": name, "ok": True, **result}
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failed += 1
            result = {"benchmark": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["wall_seconds"] = round(time.time() - started, 2)
        line = json.dumps(result, default=str)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
