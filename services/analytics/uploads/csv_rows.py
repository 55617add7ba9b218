"""Parsing and validating CSV chunks of access events (pure; runs in worker processes).

Records are read with the `csv` module from a byte offset, so a chunk starts exactly where the
previous one ended and every record keeps the file line on which it starts (the header is
line 1; a quoted field with newlines makes a record span several lines). Validation is
vectorised with pandas; only rows needing it take a per-row path (unusual timestamp formats,
deriving the deterministic event_id).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
import pandas as pd

from shared.events import EVENT_COLUMNS, AccessResult, BadgeStatus, derive_event_id, parse_timestamp

csv.field_size_limit(1 << 20)

# Header spellings accepted for each field (compared after stripping, lower-casing and
# treating "_" as a space): the contract's names and the original system's export headers.
ALIASES: dict[str, str] = {
    "event id": "event_id",
    "timestamp": "timestamp",
    "time": "timestamp",
    "person id": "person_id",
    "door id": "door_id",
    "device name": "door_id",
    "badge id": "badge_id",
    "token id": "badge_id",
    "access result": "access_result",
    "badge status": "badge_status",
    "door held open time": "door_held_open_time",
    "entry without badge": "entry_without_badge",
    "device status": "device_status",
    "facility id": "facility_id",
}
REQUIRED = ("timestamp", "person_id", "door_id", "access_result")
MAX_ID = 200
_RESULTS = {m.value.lower(): m.value for m in AccessResult}
_STATUSES = {m.value.lower(): m.value for m in BadgeStatus}
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"", "0", "false", "no", "n", "f"}
_DIGITS = re.compile(r"-?\d+")


class HeaderError(ValueError):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass
class Header:
    names: list[str]  # as written in the file
    fields: list[str | None]  # contract field of each column, None = extra column
    data_offset: int  # byte offset of the first record
    data_line: int  # file line of the first record


@dataclass
class Chunk:
    frame: pd.DataFrame | None  # validated rows, EVENT_COLUMNS + "line"
    copy_csv: bytes | None  # the same rows as CSV for COPY (EVENT_COLUMNS order)
    rows: int  # good rows
    errors: list[dict[str, Any]] = field(default_factory=list)
    next_offset: int = 0
    next_line: int = 0
    eof: bool = False
    bytes_read: int = 0
    copy_binary: bytes | None = None  # the same rows as a binary COPY payload (EVENT_COLUMNS order)


def _normal(name: str) -> str:
    return name.replace("\ufeff", "").strip().lower().replace("_", " ")


class _LineFeed:
    """Feeds decoded lines to csv.reader while counting bytes, so a chunk knows where it ended."""

    def __init__(self, fh: BinaryIO, offset: int) -> None:
        self.offset = offset
        self._fh = fh

    def __iter__(self) -> Iterator[str]:
        for raw in self._fh:
            self.offset += len(raw)
            yield raw.decode("utf-8", errors="replace")


def read_header(path: str) -> Header:
    with open(path, "rb") as fh:
        start = 3 if fh.read(3) == b"\xef\xbb\xbf" else 0
        fh.seek(start)
        feed = _LineFeed(fh, start)
        reader = csv.reader(iter(feed))
        try:
            for names in reader:
                if any(n.strip() for n in names):
                    break
            else:
                raise HeaderError("the file is empty: expected a header line and rows")
        except csv.Error as exc:
            raise HeaderError(f"the header line is not valid CSV: {exc}", {"line": reader.line_num}) from None
        fields = [ALIASES.get(_normal(n)) for n in names]
        seen: dict[str, str] = {}
        for name, f in zip(names, fields, strict=True):
            if f is not None and f in seen:
                raise HeaderError(f"columns {seen[f]!r} and {name!r} both map to {f}", {"field": f})
            if f is not None:
                seen[f] = name
        missing = [f for f in REQUIRED if f not in seen]
        if missing:
            raise HeaderError(
                f"missing required column(s): {', '.join(missing)} (accepted headers include "
                "Timestamp, Person ID, Device name, Access result, or the field names)",
                {"missing": missing, "found": names},
            )
        return Header(names=names, fields=fields, data_offset=feed.offset, data_line=reader.line_num + 1)


def _at_end(fh: BinaryIO) -> bool:
    here = fh.tell()
    more = fh.read(1)
    fh.seek(here)
    return not more


def parse_chunk(
    path: str,
    header: Header,
    offset: int,
    line: int,
    max_rows: int,
    *,
    want_frame: bool,
    want_copy: bool,
    end: int | None = None,
) -> Chunk:
    """Read up to `max_rows` records from `offset` (whose first line is `line`), and not past byte
    `end` when given (a record boundary), and validate them."""
    ncols = len(header.names)
    rows: list[list[str]] = []
    lines: list[int] = []
    errors: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        fh.seek(offset)
        feed = _LineFeed(fh, offset)
        reader = csv.reader(iter(feed))
        consumed = 0
        eof = True
        try:
            for record in reader:
                start = line + consumed
                consumed = reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    pass  # a blank line is not a record
                elif len(record) != ncols:
                    errors.append({"line": start, "reason": f"expected {ncols} fields, found {len(record)}"})
                else:
                    rows.append(record)
                    lines.append(start)
                if len(rows) + len(errors) >= max_rows or (end is not None and feed.offset >= end):
                    eof = end is not None and feed.offset >= end and _at_end(fh)
                    break
        except csv.Error as exc:
            errors.append({"line": line + consumed, "reason": f"malformed CSV: {exc}"})
            eof = True
        next_offset = feed.offset
    chunk = validate(rows, lines, header, want_frame=want_frame, want_copy=want_copy)
    chunk.errors = sorted(errors + chunk.errors, key=lambda e: e["line"])
    chunk.next_offset = next_offset
    chunk.next_line = line + consumed
    chunk.eof = eof
    chunk.bytes_read = next_offset - offset
    return chunk


def _timestamps(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """UTC timestamps and a mask of failures: ISO 8601 vectorised, then epoch ms, then other
    common formats one by one (naive times are UTC)."""
    parsed = pd.to_datetime(raw, utc=True, format="ISO8601", errors="coerce")
    todo = parsed.isna() & (raw != "")
    if todo.any():
        digits = raw[todo].str.fullmatch(_DIGITS.pattern)
        if digits.any():
            idx = digits[digits].index
            ms = pd.to_numeric(raw[idx], errors="coerce")
            ok = ms.between(0, 253402300799999)
            parsed.loc[idx[ok.to_numpy()]] = pd.to_datetime(ms[ok], unit="ms", utc=True)
        for i in parsed.index[parsed.isna() & (raw != "")]:
            text = str(raw.at[i])
            try:
                parsed.at[i] = pd.Timestamp(parse_timestamp(text))
            except ValueError:
                try:
                    value = pd.Timestamp(text)
                    parsed.at[i] = (
                        value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")
                    )
                except (ValueError, TypeError, OverflowError):
                    continue
    return parsed, parsed.isna()


def validate(
    rows: list[list[str]], lines: list[int], header: Header, *, want_frame: bool, want_copy: bool
) -> Chunk:
    if not rows:
        return Chunk(frame=None, copy_csv=None, rows=0)
    columns = list(zip(*rows, strict=True))
    raw = {f: pd.Series(columns[i], dtype=object).str.strip() for i, f in enumerate(header.fields) if f}
    n = len(rows)
    bad = np.zeros(n, dtype=bool)
    reasons = np.empty(n, dtype=object)

    def reject(mask: Any, reason: Any) -> None:
        mask = np.asarray(mask, dtype=bool) & ~bad
        if mask.any():
            reasons[mask] = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[mask]
            bad[mask] = True

    empty = pd.Series([""] * n, dtype=object)
    times, failed = _timestamps(raw["timestamp"])
    reject(raw["timestamp"] == "", "timestamp is empty")
    reject(failed, "timestamp " + raw["timestamp"].map(repr) + " is not a recognised date/time")
    for f in ("person_id", "door_id"):
        reject(raw[f] == "", f"{f} is empty")
        reject(raw[f].str.len() > MAX_ID, f"{f} is longer than {MAX_ID} characters")
    result = raw["access_result"].str.lower().map(_RESULTS)
    reject(
        result.isna(),
        "access_result " + raw["access_result"].map(repr) + " is not one of Granted, Denied, Timeout, Error",
    )
    badge = raw.get("badge_id", empty)
    reject(badge.str.len() > MAX_ID, f"badge_id is longer than {MAX_ID} characters")
    status_raw = raw.get("badge_status", empty)
    status = status_raw.str.lower().map(_STATUSES)
    reject(
        status.isna() & (status_raw != ""),
        "badge_status " + status_raw.map(repr) + " is not one of Valid, Invalid, Expired, Suspended",
    )
    held_raw = raw.get("door_held_open_time", empty)
    held = pd.to_numeric(held_raw.where(held_raw != "", "0"), errors="coerce")
    reject(
        held.isna() | (held < 0) | ~np.isfinite(held.fillna(0)),
        "door_held_open_time " + held_raw.map(repr) + " is not a number of seconds >= 0",
    )
    entry_raw = raw.get("entry_without_badge", empty).str.lower()
    entry = entry_raw.isin(_TRUE)
    reject(
        ~entry & ~entry_raw.isin(_FALSE), "entry_without_badge " + entry_raw.map(repr) + " is not a boolean"
    )
    device = raw.get("device_status", empty)
    facility = raw.get("facility_id", empty)

    keep = ~bad
    errors = [{"line": lines[i], "reason": str(reasons[i])} for i in np.flatnonzero(bad)]
    if not keep.any():
        return Chunk(frame=None, copy_csv=None, rows=0, errors=errors)
    keep_idx = np.flatnonzero(keep)
    extras = [i for i, f in enumerate(header.fields) if f is None]
    given_ids: list[str] = [str(v) for v in raw.get("event_id", empty).to_list()]
    event_ids: list[str] = []
    extra_json: list[str | None] = []
    mapped = [(i, f) for i, f in enumerate(header.fields) if f]
    for r in keep_idx:
        row = rows[int(r)]
        ex = {header.names[i]: row[i] for i in extras if row[i] != ""}
        extra_json.append(orjson.dumps(ex).decode() if ex else None)
        given = given_ids[int(r)]
        if given:
            event_ids.append(given[:MAX_ID])
        else:
            # The row as the file wrote it, by contract field, plus its extra columns.
            event_ids.append(derive_event_id({**{f: row[i] for i, f in mapped}, **ex}))
    out = pd.DataFrame(
        {
            "event_id": event_ids,
            "time": times.iloc[keep_idx].reset_index(drop=True),
            "person_id": raw["person_id"].iloc[keep_idx].to_numpy(),
            "door_id": raw["door_id"].iloc[keep_idx].to_numpy(),
            "badge_id": badge.iloc[keep_idx].replace("", None).to_numpy(),
            "access_result": result.iloc[keep_idx].to_numpy(),
            "badge_status": status.iloc[keep_idx].to_numpy(),
            "door_held_open_time": held.iloc[keep_idx].astype("float64").to_numpy(),
            "entry_without_badge": entry.iloc[keep_idx].to_numpy(),
            "device_status": device.iloc[keep_idx].replace("", "normal").to_numpy(),
            "facility_id": facility.iloc[keep_idx].replace("", None).to_numpy(),
            "extra": extra_json,
        }
    )
    copy_csv = None
    if want_copy:
        buf = io.StringIO()
        # ISO strings built by numpy in C: strftime per value was a third of the chunk's time.
        utc = out["time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
        stamps = np.char.add(np.datetime_as_string(utc, unit="us"), "Z")
        out.assign(time=stamps).to_csv(
            buf,
            columns=list(EVENT_COLUMNS),
            header=False,
            index=False,
            na_rep="",
        )
        copy_csv = buf.getvalue().encode()
    frame = None
    if want_frame:
        frame = out.assign(line=[lines[i] for i in keep_idx])
    return Chunk(frame=frame, copy_csv=copy_csv, rows=len(keep_idx), errors=errors)


def estimate_row_bytes(chunk: Chunk) -> float:
    """Memory one row of this chunk takes in flight (raw text, frame, COPY payload), roughly."""
    if chunk.rows == 0:
        return 1024.0
    per_row = chunk.bytes_read / max(1, chunk.rows + len(chunk.errors))
    return max(256.0, per_row * 12 + 400)


__all__ = [
    "ALIASES",
    "REQUIRED",
    "Chunk",
    "Header",
    "HeaderError",
    "estimate_row_bytes",
    "parse_chunk",
    "read_header",
    "validate",
]
