"""One chunk of an upload, parsed by Arrow's CSV reader and validated column-wise (pure; worker).

The chunk is a byte range that starts and ends on record boundaries (see `record_scan`), so
chunks are parsed independently and in parallel. Rows that pass every rule in Arrow kernels
(the common case) never become Python objects; every other row (an unusual timestamp format,
an unknown result, a bad number, ...) is handed to `csv_rows.validate`, the per-row reference,
which either accepts it the same way or says exactly why not. The two results are merged in
file order. `None` means "read this range with the `csv` module instead" (Arrow could not
decode it, or it split records differently from the scan).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from services.analytics.uploads.copy_binary import EventColumns, encode_copy_binary
from services.analytics.uploads.csv_rows import Chunk, Header, forbidden_mask, validate, window_mask
from services.analytics.uploads.event_ids import IdField, derive_event_ids
from services.analytics.uploads.record_scan import scan_records
from shared.event_vocabulary import (
    DEFAULT_DEVICE_STATUS,
    FALSE_WORDS,
    MAX_LENGTH,
    TRUE_WORDS,
    AccessResult,
    BadgeStatus,
)

__all__ = ["parse_span"]

# str.strip() removes exactly the characters for which str.isspace() is true; Arrow's
# utf8_trim_whitespace uses a different table, so the set is spelled out.
_PY_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_RESULTS = [m.value for m in AccessResult]
_STATUSES = [m.value for m in BadgeStatus]
_TRUE = sorted(TRUE_WORDS)
_FALSE = sorted(FALSE_WORDS)


@dataclass
class _Span:
    lines: np.ndarray  # file line of each complete record (fields == ncols)
    errors: list[dict[str, Any]]


def _records(data: bytes, line: int, ncols: int) -> _Span | None:
    recs = scan_records(data, line, final=True)
    if recs.anomaly is not None or recs.complete != len(data):
        return None
    errors: list[dict[str, Any]] = []
    wrong = np.flatnonzero(recs.fields != ncols)
    for i in wrong.tolist():
        found = int(recs.fields[i])
        if found == 1:  # maybe only blanks, which the csv module skips as it does empty lines
            text = data[int(recs.starts[i]) : int(recs.ends[i])].decode("utf-8", errors="replace")
            record = next(csv.reader([text]), [])
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
        errors.append({"line": int(recs.lines[i]), "reason": f"expected {ncols} fields, found {found}"})
    return _Span(lines=recs.lines[recs.fields == ncols], errors=errors)


def _read(data: bytes, ncols: int) -> list[pa.StringArray] | None:
    names = [f"c{i}" for i in range(ncols)]
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 64),
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=lambda _row: "skip"
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None  # e.g. bytes that are not UTF-8: the csv module decodes them with replacement
    return [table.column(i).combine_chunks() for i in range(ncols)]


def _objects(values: pa.Array) -> pd.Series:
    """As the per-row path sees them: a Series of Python str, so pandas parses them the same way."""
    return pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)


def _is_in(values: pa.Array, words: list[str]) -> np.ndarray:
    return np.asarray(pc.is_in(values, value_set=pa.array(words)).to_numpy(zero_copy_only=False), dtype=bool)


def _pick(values: pa.Array, words: list[str]) -> pa.Array:
    """The canonical spelling of each value (case-insensitive), null when not one of `words`."""
    index = pc.index_in(pc.ascii_lower(values), value_set=pa.array([w.lower() for w in words]))
    return pc.take(pa.array(words), index)


def _fast_columns(
    raw: dict[str, pa.StringArray], extras: list[tuple[str, pa.StringArray]], n: int
) -> tuple[np.ndarray, EventColumns]:
    """(rows that pass every rule, their columns); columns are computed for every row."""
    empty = pa.array([""] * n, type=pa.string())
    text = {f: pc.utf8_trim(v, _PY_WHITESPACE) for f, v in raw.items()}

    def col(name: str) -> pa.Array:
        return text.get(name, empty)

    stamps = pd.to_datetime(_objects(text["timestamp"]), utc=True, format="ISO8601", errors="coerce")
    ok = stamps.notna().to_numpy().copy()
    ok &= ~window_mask(stamps)
    for f in ("person_id", "door_id"):
        ok &= pc.utf8_length(text[f]).to_numpy(zero_copy_only=False) > 0
    for f, limit in MAX_LENGTH.items():
        if f in text:
            ok &= pc.utf8_length(text[f]).to_numpy(zero_copy_only=False) <= limit
    for values in [*raw.values(), *(v for _, v in extras)]:
        # Rare, so checked on the raw bytes first: a NUL anywhere sends the row to the slow path.
        if pc.any(pc.match_substring(values, "\x00")).as_py():
            ok &= ~forbidden_mask(_objects(values))
    result = _pick(text["access_result"], _RESULTS)
    ok &= result.is_valid().to_numpy(zero_copy_only=False)
    status_text = col("badge_status")
    status = _pick(status_text, _STATUSES)
    ok &= status.is_valid().to_numpy(zero_copy_only=False) | (
        pc.equal(status_text, "").to_numpy(zero_copy_only=False)
    )
    if "door_held_open_time" in text:
        held_raw = _objects(text["door_held_open_time"])
        held_num = pd.to_numeric(held_raw.where(held_raw != "", "0"), errors="coerce")
        held = held_num.to_numpy(dtype="float64", na_value=np.nan)
        ok &= np.isfinite(held) & (held >= 0)
    else:
        held = np.zeros(n)
    if "entry_without_badge" in text:
        entry_text = pc.ascii_lower(text["entry_without_badge"])
        entry = _is_in(entry_text, _TRUE)
        ok &= entry | _is_in(entry_text, _FALSE)
    else:
        entry = np.zeros(n, dtype=bool)

    fields = [IdField(f, v) for f, v in raw.items()] + [IdField(k, v, omit_empty=True) for k, v in extras]
    ids = derive_event_ids(fields, n)
    if "event_id" in text:
        given = text["event_id"]
        ids = pc.if_else(pc.equal(given, ""), ids, given)

    extra_json: pa.Array
    if extras:
        names = [k for k, _ in extras]
        values = [v.to_pylist() for _, v in extras]
        docs: list[str | None] = []
        for row in zip(*values, strict=True):
            ex = {k: v for k, v in zip(names, row, strict=True) if v != ""}
            docs.append(orjson.dumps(ex).decode() if ex else None)
        extra_json = pa.array(docs, type=pa.string())
    else:
        extra_json = pa.nulls(n, type=pa.string())

    utc = stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    badge = col("badge_id")
    device = col("device_status")
    facility = col("facility_id")
    null = pa.scalar(None, pa.string())
    columns = EventColumns(
        event_id=ids,
        time_us=utc.astype(np.int64),
        person_id=text["person_id"],
        door_id=text["door_id"],
        badge_id=pc.if_else(pc.equal(badge, ""), null, badge),
        access_result=result,
        badge_status=status,
        door_held_open_time=held,
        entry_without_badge=entry,
        device_status=pc.if_else(pc.equal(device, ""), DEFAULT_DEVICE_STATUS, device),
        facility_id=pc.if_else(pc.equal(facility, ""), null, facility),
        extra=extra_json,
    )
    return ok, columns


def _from_frame(frame: pd.DataFrame) -> EventColumns:
    """Columns of the rows the per-row path accepted."""
    utc = frame["time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")

    def text(name: str) -> pa.Array:
        return pa.array(
            frame[name].astype(object).where(frame[name].notna(), None).tolist(), type=pa.string()
        )

    return EventColumns(
        event_id=text("event_id"),
        time_us=utc.astype(np.int64),
        person_id=text("person_id"),
        door_id=text("door_id"),
        badge_id=text("badge_id"),
        access_result=text("access_result"),
        badge_status=text("badge_status"),
        door_held_open_time=frame["door_held_open_time"].to_numpy(dtype="float64"),
        entry_without_badge=frame["entry_without_badge"].to_numpy(dtype=bool),
        device_status=text("device_status"),
        facility_id=text("facility_id"),
        extra=text("extra"),
    )


def parse_span(
    path: str, header: Header, start: int, end: int, line: int, *, want_frame: bool, want_copy: bool
) -> Chunk | None:
    """Parse and validate the records in bytes [start, end) of `path`, the first on `line`."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    ncols = len(header.names)
    span = _records(data, line, ncols)
    if span is None:
        return None
    lines = span.lines
    n = len(lines)
    columns_raw = _read(data, ncols) if n else []
    if columns_raw is None or (n and len(columns_raw[0]) != n):
        return None
    errors = list(span.errors)
    parts: list[tuple[EventColumns, np.ndarray]] = []
    if n:
        raw = {f: columns_raw[i] for i, f in enumerate(header.fields) if f}
        extras = [(header.names[i], columns_raw[i]) for i, f in enumerate(header.fields) if f is None]
        ok, fast = _fast_columns(raw, extras, n)
        good = np.flatnonzero(ok)
        parts.append((fast, lines) if len(good) == n else (fast.take(good), lines[good]))
        slow = np.flatnonzero(~ok)
        if len(slow):
            take = pa.array(slow)
            rows = [list(r) for r in zip(*(c.take(take).to_pylist() for c in columns_raw), strict=True)]
            checked = validate(rows, lines[slow].tolist(), header, want_frame=True, want_copy=False)
            errors.extend(checked.errors)
            if checked.frame is not None and len(checked.frame):
                parts.append((_from_frame(checked.frame), checked.frame["line"].to_numpy(dtype=np.int64)))
    errors.sort(key=lambda e: e["line"])
    chunk = Chunk(frame=None, copy_csv=None, rows=0, errors=errors, bytes_read=len(data))
    if not parts:
        return chunk
    merged, merged_lines = EventColumns.concat(parts)
    chunk.rows = len(merged_lines)
    if want_copy:
        # In event_id order the primary-key inserts touch neighbouring index pages one after
        # another: about a fifth less database CPU per row than file order (measured).
        order = np.asarray(pc.sort_indices(merged.event_id).to_numpy(zero_copy_only=False))
        chunk.copy_binary = encode_copy_binary(merged.take(order))
    if want_frame:
        chunk.frame = merged.to_frame().assign(line=merged_lines)
    return chunk
