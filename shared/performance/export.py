"""Export of the snapshot history to JSON and CSV.

CSV is in long form: one row per (snapshot, operation), the resource columns repeated, and one
row with empty operation columns for a snapshot in which nothing ran; spreadsheets and pandas
pivot it directly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import orjson

from shared.performance.monitor import HistoryEntry, PerformanceMonitor

CSV_COLUMNS = (
    "timestamp",
    "interval_s",
    "rss_bytes",
    "cpu_percent",
    "system_cpu_percent",
    "system_memory_percent",
    "num_threads",
    "open_fds",
    "operation",
    "unit",
    "count",
    "mean",
    "min",
    "max",
    "p50",
    "p95",
    "p99",
)


def history_as_dicts(entries: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
    return [entry.as_dict() for entry in entries]


def export_history_json(monitor: PerformanceMonitor) -> bytes:
    body = {
        "snapshot_interval_s": monitor.snapshot_interval_s,
        "history_size": monitor.history_size,
        "history": history_as_dicts(monitor.history()),
    }
    return orjson.dumps(body)


def history_csv_rows(entries: Iterable[HistoryEntry]) -> Iterable[dict[str, Any]]:
    for entry in entries:
        base = {**entry.resources.as_dict(), "interval_s": entry.interval_s}
        if not entry.operations:
            yield base
            continue
        for name in sorted(entry.operations):
            yield {**base, "operation": name, **entry.operations[name].as_dict()}


def export_history_csv(monitor: PerformanceMonitor) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history_csv_rows(monitor.history()))
    return out.getvalue()
