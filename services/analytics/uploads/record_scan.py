"""Where each CSV record starts, found with numpy over raw bytes, and where that is not safe.

Splitting a file into chunks that workers parse in parallel needs record boundaries: a newline
ends a record only outside quotes, and a quoted field may hold newlines. Outside a quoted
field the number of `"` seen so far is even, so a newline with an even count before it ends a
record; that is one vectorised pass instead of running the `csv` module over the whole file.
The same pass gives each record's first line (header = line 1) and its field count.

Counting quotes matches the `csv` module (and Arrow's reader) only for well-formed quoting.
Anything where they could disagree is reported as an anomaly (its byte offset) so the caller
reads from that record on with the `csv` module, which defines the behaviour: a quote inside
an unquoted field, text after a closing quote, a carriage return that is not part of CRLF
outside quotes, a NUL byte, an unterminated quote, or a record longer than the `csv` module's
field limit. Hand-written because neither the `csv` module nor Arrow reports record offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_RECORD_BYTES", "Plan", "Records", "Span", "in_flight_bytes", "plan_spans", "scan_records"]

MAX_RECORD_BYTES = 1 << 20  # the csv module's field size limit used by the sequential reader
_QUOTE, _COMMA, _LF, _CR = ord('"'), ord(","), ord("\n"), ord("\r")


@dataclass
class Records:
    starts: np.ndarray  # byte offset in `data` of each non-blank record
    ends: np.ndarray  # offset just past each such record's terminator (or the data's end)
    lines: np.ndarray  # file line on which each such record starts
    fields: np.ndarray  # number of fields of each such record
    complete: int  # bytes covered by whole records (the rest starts an unfinished one)
    next_line: int  # file line at `complete`
    anomaly: int | None  # offset of the first record where quote counting may mislead
    anomaly_line: int = 0  # file line at `anomaly`


def scan_records(
    data: bytes | memoryview, first_line: int, *, final: bool, count_fields: bool = True
) -> Records:
    """Records of `data`, which starts at a record boundary on line `first_line`. Unless `final`,
    a trailing record without its newline is left out (`complete` stops before it)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    size = len(buf)
    quotes = np.flatnonzero(buf == _QUOTE)
    newlines = np.flatnonzero(buf == _LF)
    inside_at_nl = np.searchsorted(quotes, newlines) & 1
    terminators = newlines[inside_at_nl == 0]
    odd_at_end = len(quotes) & 1
    if final and size and (not len(terminators) or terminators[-1] != size - 1) and not odd_at_end:
        ends = np.append(terminators + 1, size)
    else:
        ends = terminators + 1
    complete = int(ends[-1]) if len(ends) else 0
    starts = np.concatenate(([0], ends[:-1])) if len(ends) else ends

    anomalies: list[int] = []
    if final and odd_at_end:
        anomalies.append(complete)  # an opening quote never closed: the unfinished record
    if len(quotes):
        opening = (np.arange(len(quotes)) & 1) == 0  # an even number of quotes before it
        prev = np.where(quotes > 0, buf[np.maximum(quotes - 1, 0)], _LF)
        nxt = np.where(quotes + 1 < size, buf[np.minimum(quotes + 1, size - 1)], _LF)
        bad_open = opening & ~np.isin(prev, (_COMMA, _LF, _QUOTE))
        bad_close = ~opening & ~np.isin(nxt, (_COMMA, _LF, _CR, _QUOTE))
        bad = np.flatnonzero(bad_open | bad_close)
        if len(bad):
            anomalies.append(int(quotes[bad[0]]))
    crs = np.flatnonzero(buf == _CR)
    if len(crs):
        outside = (np.searchsorted(quotes, crs) & 1) == 0
        lone = outside & ((crs + 1 >= size) | (buf[np.minimum(crs + 1, size - 1)] != _LF))
        if lone.any():
            anomalies.append(int(crs[np.argmax(lone)]))
    nul = np.flatnonzero(buf == 0)
    if len(nul):
        anomalies.append(int(nul[0]))
    lengths = ends - starts
    if len(lengths) and int(lengths.max()) > MAX_RECORD_BYTES:
        anomalies.append(int(starts[np.argmax(lengths > MAX_RECORD_BYTES)]))
    if not final:
        # The unfinished record is scanned again, whole, by the next call.
        anomalies = [a for a in anomalies if a < complete]
    if size - complete > MAX_RECORD_BYTES:
        anomalies.append(complete)

    anomaly = None
    if anomalies:
        # Report the start of the record holding the first anomaly.
        first = min(anomalies)
        idx = int(np.searchsorted(starts, first, side="right")) - 1
        anomaly = complete if first >= complete else (int(starts[idx]) if idx >= 0 else 0)

    # Blank records (an empty line, or CRLF alone) are not records for the csv module either.
    content = lengths.copy()
    if len(ends):
        content -= buf[ends - 1] == _LF
        content -= (content > 0) & (buf[np.maximum(starts + content - 1, 0)] == _CR)
    keep = content > 0
    line_of_start = first_line + np.searchsorted(newlines, starts)
    if count_fields:
        commas = np.flatnonzero(buf == _COMMA)
        outside_commas = commas[(np.searchsorted(quotes, commas) & 1) == 0]
        fields = np.diff(np.searchsorted(outside_commas, np.append(starts, complete))) + 1
    else:
        fields = np.zeros(len(starts), dtype=np.int64)
    next_line = first_line + int(np.searchsorted(newlines, complete))
    return Records(
        starts=starts[keep],
        ends=ends[keep],
        lines=line_of_start[keep],
        fields=fields[keep],
        complete=complete,
        next_line=next_line,
        anomaly=anomaly,
        anomaly_line=first_line + int(np.searchsorted(newlines, anomaly)) if anomaly is not None else 0,
    )


@dataclass
class Span:
    start: int  # byte offset of the span's first record (or of blank lines before it)
    end: int  # byte offset just past its last record
    line: int  # file line at `start`
    records: int  # non-blank records in the span


@dataclass
class Plan:
    spans: list[Span]
    next_offset: int  # where the next call continues (or the csv module takes over)
    next_line: int
    eof: bool  # the spans reach the end of the file
    anomaly: bool  # stopped before a record that only the csv module may read


def in_flight_bytes(raw_bytes: Any, records: Any) -> Any:
    """Memory a span takes while parsed and stored, roughly: its text, the Arrow and pandas
    columns, the COPY payload and the copies pickling makes."""
    return raw_bytes * 12 + records * 400


def plan_spans(path: str, offset: int, line: int, rows: int, budget: int, block: int = 8 << 20) -> Plan:
    """Split the file from `offset` (a record boundary on `line`) into spans of at most `rows`
    records and at most `budget` bytes in flight each, reading up to `block` bytes. Stops at the
    first anomaly; otherwise the block's last, possibly cut, span is left to the next call."""
    while True:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(block)
            eof = len(data) < block or not fh.read(1)
        recs = scan_records(data, line, final=eof, count_fields=False)
        if recs.complete or eof or recs.anomaly is not None:
            break
        block *= 2  # not one whole record yet (a record is at most MAX_RECORD_BYTES)
    if recs.anomaly is not None:
        stop, stop_line = recs.anomaly, recs.anomaly_line
    else:
        stop, stop_line = recs.complete, recs.next_line
    keep = recs.starts < stop
    starts, lines, ends = recs.starts[keep], recs.lines[keep], recs.ends[keep]
    spans: list[Span] = []
    first, begin, begin_line = 0, 0, line
    while first < len(starts):
        sizes = ends[first : first + rows] - begin
        memory = in_flight_bytes(sizes, np.arange(1, len(sizes) + 1))
        count = max(1, int(np.searchsorted(memory, budget, side="right")))
        last = first + count
        if last == len(starts) and recs.anomaly is None and not eof and spans:
            break  # the block may have cut this span short: the next call reads it whole
        end = int(starts[last]) if last < len(starts) else stop
        spans.append(Span(start=offset + begin, end=offset + end, line=begin_line, records=count))
        first = last
        begin, begin_line = (end, int(lines[last])) if last < len(starts) else (stop, stop_line)
    if not spans:
        begin, begin_line = stop, stop_line
    return Plan(
        spans=spans,
        next_offset=offset + begin,
        next_line=begin_line,
        eof=eof and recs.anomaly is None and begin == len(data),
        anomaly=recs.anomaly is not None and begin == stop,
    )
