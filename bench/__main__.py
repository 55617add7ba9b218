"""`make bench` / `python -m bench [NAME ...] [--quick]`: run benchmarks, one JSON object per line.

Every module in this package that defines `run(quick: bool) -> dict` is a benchmark. A run
measures the target and its baseline in the same process run, so the ratio is meaningful on
whatever machine runs it. Results go to stdout (JSON lines); progress goes to stderr, so the
JSON stays clean when stdout is piped into a file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import bench

HEARTBEAT_S = 15.0


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextmanager
def heartbeat(name: str, interval_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Say every `interval_s` that `name` is still running, so a long run is visibly alive."""
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(interval_s):
            progress(f"{name}: still running, {time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=beat, name=f"bench-heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def build_parser(known: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the fleet's benchmarks; each prints one JSON object with its baseline.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {known})"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and durations, for a smoke run")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    known = discover()
    parser = build_parser(known)
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.exit(
            2, f"python -m bench: unknown benchmark {', '.join(unknown)} (known: {', '.join(known)})\n"
        )
    names = args.names or known
    failed = 0
    for index, name in enumerate(names, start=1):
        progress(f"{name} ({index}/{len(names)}) started{' (quick)' if args.quick else ''}")
        module = importlib.import_module(f"bench.{name}")
        started = time.time()
        try:
            with heartbeat(name):
                result = module.run(quick=args.quick)
            result = {"benchmark": name, "ok": True, **result}
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failed += 1
            result = {"benchmark": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["wall_seconds"] = round(time.time() - started, 2)
        outcome = "done" if result["ok"] else "FAILED"
        progress(f"{name} ({index}/{len(names)}) {outcome} in {result['wall_seconds']} s")
        line = json.dumps(result, default=str)
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
