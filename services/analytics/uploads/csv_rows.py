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

from shared.event_vocabulary import (
    ACCESS_RESULTS,
    BADGE_STATUSES,
    DEFAULT_DEVICE_STATUS,
    FALSE_WORDS,
    FORBIDDEN_TEXT,
    MAX_LENGTH,
    TRUE_WORDS,
    AccessResult,
    BadgeStatus,
    parse_timestamp,
    text_problem,
    time_window,
    window_description,
)
from shared.events import EVENT_COLUMNS, derive_event_id

csv.field_size_limit(1 << 20)

# Header spellings accepted for each field (compared after stripping, lower-casing and
# treating "_" as a space): the event format's names and the original system's export headers.
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
# A header line longer than this is refused before it is read whole (a header is names, not data).
MAX_HEADER_BYTES = 64 * 1024
MAX_COLUMNS = 1000
_RESULTS = {word: member.value for word, member in ACCESS_RESULTS.items()}
_STATUSES = {word: member.value for word, member in BADGE_STATUSES.items()}
_DIGITS = re.compile(r"-?\d+")
# Epoch milliseconds of the first and last instants a Python datetime can hold.
_DATETIME_MIN_MS = -62_135_596_800_000
_DATETIME_MAX_MS = 253_402_300_799_999


class HeaderError(ValueError):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass
class Header:
    names: list[str]  # as written in the file
    fields: list[str | None]  # event field of each column, None = extra column
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


class _BoundedLines:
    """Lines of the header for csv.reader, at most `limit` bytes in all: a header line of 150 MB
    must cost a 422, not 290 MiB (reading by line would load it whole)."""

    def __init__(self, fh: BinaryIO, offset: int, limit: int) -> None:
        self.offset = offset
        self._fh = fh
        self._left = limit
        self.limit = limit

    def __iter__(self) -> Iterator[str]:
        while raw := self._fh.readline(self._left + 1):
            if len(raw) > self._left:
                raise HeaderError(
                    f"the header is longer than {self.limit} bytes (is the first line really a header?)",
                    {"max_header_bytes": self.limit},
                )
            self._left -= len(raw)
            self.offset += len(raw)
            yield raw.decode("utf-8", errors="replace")


def read_header(path: str, max_bytes: int = MAX_HEADER_BYTES) -> Header:
    """The header: the first non-blank record, read within `max_bytes` (blank lines before it
    count). Raises HeaderError for anything unusable, never another exception."""
    with open(path, "rb") as fh:
        start = 3 if fh.read(3) == b"\xef\xbb\xbf" else 0
        fh.seek(start)
        feed = _BoundedLines(fh, start, max_bytes)
        reader = csv.reader(iter(feed))
        try:
            for names in reader:
                if any(n.strip() for n in names):
                    break
            else:
                raise HeaderError("the file is empty: expected a header line and rows")
        except csv.Error as exc:
            raise HeaderError(f"the header line is not valid CSV: {exc}") from None
        if len(names) > MAX_COLUMNS:
            raise HeaderError(
                f"{len(names)} columns; at most {MAX_COLUMNS} are accepted", {"columns": len(names)}
            )
        for name in names:
            if problem := text_problem(name):  # extra columns become JSON keys in `extra`
                raise HeaderError(f"column name {name!r} {problem}", {"column": name[:200]})
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
                {"missing": missing, "found": names[:50]},
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
    """UTC timestamps (microseconds, which hold every instant a Python datetime can) and a mask
    of failures: ISO 8601 vectorised, then epoch ms, then other common formats one by one (naive
    times are UTC). The window is checked separately."""
    parsed = pd.to_datetime(raw, utc=True, format="ISO8601", errors="coerce").astype("datetime64[us, UTC]")
    todo = parsed.isna() & (raw != "")
    if todo.any():
        digits = raw[todo].str.fullmatch(_DIGITS.pattern)
        if digits.any():
            idx = digits[digits].index
            ms = pd.to_numeric(raw[idx], errors="coerce")
            ok = ms.between(_DATETIME_MIN_MS, _DATETIME_MAX_MS)
            parsed.loc[idx[ok.to_numpy()]] = pd.to_datetime(ms[ok], unit="ms", utc=True)
        for i in parsed.index[parsed.isna() & (raw != "")]:
            text = str(raw.at[i])
            try:
                parsed.at[i] = pd.Timestamp(parse_timestamp(text))
            except (ValueError, OverflowError):
                try:
                    value = pd.Timestamp(text)
                    parsed.at[i] = (
                        value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")
                    )
                except (ValueError, TypeError, OverflowError):
                    continue
    return parsed, parsed.isna()


def window_mask(times: pd.Series) -> np.ndarray:
    """Rows whose (parsed) time lies outside the vocabulary's accepted window."""
    earliest, latest = time_window()
    out = (times < pd.Timestamp(earliest)) | (times > pd.Timestamp(latest))
    return np.asarray(out.fillna(False), dtype=bool)


def forbidden_mask(values: pd.Series) -> np.ndarray:
    """Cells holding a character no text field may hold (see the vocabulary)."""
    return np.asarray(values.str.contains(FORBIDDEN_TEXT.pattern, regex=True).fillna(False), dtype=bool)


class _Rejections:
    """Rows of a chunk found bad so far and, for each, the first reason (later ones are not kept)."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reasons = np.empty(n, dtype=object)

    def reject(self, mask: Any, reason: Any) -> None:
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        if mask.any():
            self.reasons[mask] = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[mask]
            self.bad[mask] = True

    def errors(self, lines: list[int]) -> list[dict[str, Any]]:
        return [{"line": lines[i], "reason": str(self.reasons[i])} for i in np.flatnonzero(self.bad)]


@dataclass
class _Values:
    """Every event field of a chunk as validated columns (one entry per row, good or bad)."""

    times: pd.Series
    result: pd.Series
    badge: pd.Series
    status: pd.Series
    held: pd.Series
    entry: pd.Series
    device: pd.Series
    facility: pd.Series


def _check_timestamp(raw: dict[str, pd.Series], rejections: _Rejections) -> pd.Series:
    stamp = raw["timestamp"]
    times, failed = _timestamps(stamp)
    rejections.reject(stamp == "", "timestamp is empty")
    rejections.reject(failed, "timestamp " + stamp.map(repr) + " is not a recognised date/time")
    rejections.reject(
        window_mask(times),
        "timestamp " + stamp.map(repr) + f" is outside the accepted window ({window_description()})",
    )
    return times


def _check_text(
    raw: dict[str, pd.Series], header: Header, rows: list[list[str]], rejections: _Rejections
) -> None:
    for f in ("person_id", "door_id"):
        rejections.reject(raw[f] == "", f"{f} is empty")
    for f, limit in MAX_LENGTH.items():
        if f in raw:
            rejections.reject(raw[f].str.len() > limit, f"{f} is longer than {limit} characters")
    # The csv module decodes with replacement, so NUL is the one forbidden character seen here.
    nul = text_problem("\x00")
    for name, values in raw.items():
        rejections.reject(forbidden_mask(values), f"{name} {nul}")
    for i, extra in enumerate(header.fields):
        if extra is None:
            column = pd.Series([row[i] for row in rows], dtype=object)
            rejections.reject(forbidden_mask(column), f"column {header.names[i]!r} {nul}")


def _check_enums(
    raw: dict[str, pd.Series], empty: pd.Series, rejections: _Rejections
) -> tuple[pd.Series, pd.Series]:
    result = raw["access_result"].str.lower().map(_RESULTS)
    rejections.reject(
        result.isna(),
        "access_result " + raw["access_result"].map(repr) + f" is not one of {', '.join(AccessResult)}",
    )
    status_raw = raw.get("badge_status", empty)
    status = status_raw.str.lower().map(_STATUSES)
    rejections.reject(
        status.isna() & (status_raw != ""),
        "badge_status " + status_raw.map(repr) + f" is not one of {', '.join(BadgeStatus)}",
    )
    return result, status


def _check_held(raw: dict[str, pd.Series], empty: pd.Series, rejections: _Rejections) -> pd.Series:
    held_raw = raw.get("door_held_open_time", empty)
    held = pd.to_numeric(held_raw.where(held_raw != "", "0"), errors="coerce")
    rejections.reject(
        held.isna() | (held < 0) | ~np.isfinite(held.fillna(0)),
        "door_held_open_time " + held_raw.map(repr) + " is not a number of seconds >= 0",
    )
    return held


def _check_entry(raw: dict[str, pd.Series], empty: pd.Series, rejections: _Rejections) -> pd.Series:
    entry_raw = raw.get("entry_without_badge", empty).str.lower()
    entry = entry_raw.isin(TRUE_WORDS)
    rejections.reject(
        ~entry & ~entry_raw.isin(FALSE_WORDS),
        "entry_without_badge " + entry_raw.map(repr) + " is not a boolean",
    )
    return entry


def _check_rows(
    rows: list[list[str]], header: Header, rejections: _Rejections
) -> tuple[dict[str, pd.Series], _Values]:
    """Apply every rule of the vocabulary to every row, column-wise; the first failure counts."""
    columns = list(zip(*rows, strict=True))
    raw = {f: pd.Series(columns[i], dtype=object).str.strip() for i, f in enumerate(header.fields) if f}
    empty = pd.Series([""] * len(rows), dtype=object)
    times = _check_timestamp(raw, rejections)
    _check_text(raw, header, rows, rejections)
    result, status = _check_enums(raw, empty, rejections)
    held = _check_held(raw, empty, rejections)
    entry = _check_entry(raw, empty, rejections)
    values = _Values(
        times=times,
        result=result,
        badge=raw.get("badge_id", empty),
        status=status,
        held=held,
        entry=entry,
        device=raw.get("device_status", empty),
        facility=raw.get("facility_id", empty),
    )
    return raw, values


def _ids_and_extras(
    rows: list[list[str]], keep_idx: np.ndarray, header: Header, raw: dict[str, pd.Series]
) -> tuple[list[str], list[str | None]]:
    """The event_id of each kept row (given, or derived from the row) and its extra columns as JSON."""
    extras = [i for i, f in enumerate(header.fields) if f is None]
    given_ids: list[str] = [str(v) for v in raw["event_id"].to_list()] if "event_id" in raw else []
    mapped = [(i, f) for i, f in enumerate(header.fields) if f]
    event_ids: list[str] = []
    extra_json: list[str | None] = []
    for r in keep_idx:
        row = rows[int(r)]
        ex = {header.names[i]: row[i] for i in extras if row[i] != ""}
        extra_json.append(orjson.dumps(ex).decode() if ex else None)
        given = given_ids[int(r)] if given_ids else ""
        # The row as the file wrote it, by event field, plus its extra columns.
        event_ids.append(given or derive_event_id({**{f: row[i] for i, f in mapped}, **ex}))
    return event_ids, extra_json


def _kept_frame(
    values: _Values,
    raw: dict[str, pd.Series],
    keep_idx: np.ndarray,
    event_ids: list[str],
    extra: list[str | None],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": event_ids,
            "time": values.times.iloc[keep_idx].reset_index(drop=True),
            "person_id": raw["person_id"].iloc[keep_idx].to_numpy(),
            "door_id": raw["door_id"].iloc[keep_idx].to_numpy(),
            "badge_id": values.badge.iloc[keep_idx].replace("", None).to_numpy(),
            "access_result": values.result.iloc[keep_idx].to_numpy(),
            "badge_status": values.status.iloc[keep_idx].to_numpy(),
            "door_held_open_time": values.held.iloc[keep_idx].astype("float64").to_numpy(),
            "entry_without_badge": values.entry.iloc[keep_idx].to_numpy(),
            "device_status": values.device.iloc[keep_idx].replace("", DEFAULT_DEVICE_STATUS).to_numpy(),
            "facility_id": values.facility.iloc[keep_idx].replace("", None).to_numpy(),
            "extra": extra,
        }
    )


def _copy_csv(out: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    # ISO strings built by numpy in C: strftime per value was a third of the chunk's time.
    utc = out["time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    stamps = np.char.add(np.datetime_as_string(utc, unit="us"), "Z")
    out.assign(time=stamps).to_csv(buf, columns=list(EVENT_COLUMNS), header=False, index=False, na_rep="")
    return buf.getvalue().encode()


def validate(
    rows: list[list[str]], lines: list[int], header: Header, *, want_frame: bool, want_copy: bool
) -> Chunk:
    """Validate records (each with its file line) against the event vocabulary: the per-row
    reference the Arrow path defers to. Bad rows become errors with their line and reason."""
    if not rows:
        return Chunk(frame=None, copy_csv=None, rows=0)
    rejections = _Rejections(len(rows))
    raw, values = _check_rows(rows, header, rejections)
    errors = rejections.errors(lines)
    keep_idx = np.flatnonzero(~rejections.bad)
    if not len(keep_idx):
        return Chunk(frame=None, copy_csv=None, rows=0, errors=errors)
    event_ids, extra = _ids_and_extras(rows, keep_idx, header, raw)
    out = _kept_frame(values, raw, keep_idx, event_ids, extra)
    return Chunk(
        frame=out.assign(line=[lines[i] for i in keep_idx]) if want_frame else None,
        copy_csv=_copy_csv(out) if want_copy else None,
        rows=len(keep_idx),
        errors=errors,
    )


def estimate_row_bytes(chunk: Chunk) -> float:
    """Memory one row of this chunk takes in flight (raw text, frame, COPY payload), roughly."""
    if chunk.rows == 0:
        return 1024.0
    per_row = chunk.bytes_read / max(1, chunk.rows + len(chunk.errors))
    return max(256.0, per_row * 12 + 400)


__all__ = [
    "ALIASES",
    "MAX_HEADER_BYTES",
    "REQUIRED",
    "Chunk",
    "Header",
    "HeaderError",
    "estimate_row_bytes",
    "forbidden_mask",
    "parse_chunk",
    "read_header",
    "validate",
    "window_mask",
]
