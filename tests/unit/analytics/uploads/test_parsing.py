"""The parallel upload parser (record scan + Arrow + column-wise validation) gives exactly what the
sequential `csv`-module reader gives: the same rows, ids, values, errors and line numbers."""

from __future__ import annotations

import csv
import io
import itertools
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.analytics.uploads.arrow_chunks import parse_span
from services.analytics.uploads.csv_rows import Header, parse_chunk, read_header
from services.analytics.uploads.record_scan import plan_spans, scan_records

HEADERS = [
    ["Timestamp", "Person ID", "Token ID", "Device name", "Access result"],
    [
        "event_id",
        "timestamp",
        "person_id",
        "door_id",
        "access_result",
        "badge_status",
        "door_held_open_time",
        "entry_without_badge",
        "device_status",
        "facility_id",
        "firmware",
        "Zone",
    ],
]
STAMPS = [
    "2025-01-01T12:00:00Z",
    "2025-01-01 12:01:00+02:00",
    "2025-01-01T12:00:00.123456",
    "2025-03-04T05:06:07.5-07:30",
    " 2025-01-01T00:00:00Z ",
    "1735732920000",
    "01/02/2025 10:00",
    "Jan 5 2025 10:00",
    "not a time",
    "",
    "99999999999999999",
    "2025-02-30T00:00:00Z",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59.999999+00:00",
    "0001-01-01T00:00:00Z",
    "2999-01-01T00:00:00Z",
    "253402300799999",
    "-1",
]
TEXT = [
    "p1",
    "door 7",
    "door, with comma",
    'say "hi"',
    "multi\nline",
    "x\r\ny",
    "é€𝄞",
    "  padded  ",
    "",
    "a" * 201,
]
RESULTS = ["Granted", "denied", "TIMEOUT", " Error ", "maybe", ""]
STATUSES = ["", "Valid", "expired", "SUSPENDED", "lost"]
HELD = ["", "0", "45.5", "1e3", "-1", "inf", "nan", "abc", " 7 "]
ENTRY = ["", "yes", "No", "1", "F", "maybe"]


def _value(rng: random.Random, name: str) -> str:
    key = name.lower()
    if "time" in key and "held" not in key:
        return (
            rng.choice(STAMPS)
            if rng.random() < 0.3
            else f"2025-01-{rng.randrange(1, 29):02d}T10:{rng.randrange(60):02d}:00Z"
        )
    if "result" in key:
        return rng.choice(RESULTS) if rng.random() < 0.3 else "Granted"
    if key == "badge_status":
        return rng.choice(STATUSES)
    if "held" in key:
        return rng.choice(HELD)
    if "entry" in key:
        return rng.choice(ENTRY)
    if key == "event_id":
        return rng.choice(["", "", "e-1", "  e-2 ", "é" * 210, f"id-{rng.randrange(1000)}"])
    return rng.choice(TEXT) if rng.random() < 0.3 else f"v{rng.randrange(100)}"


def _csv_text(rng: random.Random, header: list[str], rows: int, crlf: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header)
    for _ in range(rows):
        roll = rng.random()
        if roll < 0.02:
            buf.write("\n")  # blank line
        elif roll < 0.03:
            buf.write("   \n")  # only blanks
        elif roll < 0.05:
            writer.writerow([_value(rng, h) for h in header][: rng.randrange(1, len(header))])  # too few
        elif roll < 0.06:
            writer.writerow([*(_value(rng, h) for h in header), "surplus"])
        else:
            writer.writerow([_value(rng, h) for h in header])
    return buf.getvalue()


def _sequential(path: str, rows: int = 37) -> tuple[pd.DataFrame | None, list[dict[str, Any]]]:
    header = read_header(path)
    offset, line = header.data_offset, header.data_line
    frames, errors = [], []
    while True:
        chunk = parse_chunk(path, header, offset, line, rows, want_frame=True, want_copy=False)
        if chunk.frame is not None:
            frames.append(chunk.frame)
        errors += chunk.errors
        offset, line = chunk.next_offset, chunk.next_line
        if chunk.eof:
            break
    return (pd.concat(frames, ignore_index=True) if frames else None), errors


def _parallel(
    path: str, rows: int = 37, block: int = 700
) -> tuple[pd.DataFrame | None, list[dict[str, Any]], bool]:
    """What AsyncFileProcessor does, without the worker pool (small blocks: many plan calls)."""
    header = read_header(path)
    offset, line = header.data_offset, header.data_line
    frames, errors = [], []
    fell_back = False

    def take(chunk: Any) -> None:
        if chunk.frame is not None and len(chunk.frame):
            frames.append(chunk.frame.drop(columns=[]))
        errors.extend(chunk.errors)

    while True:
        plan = plan_spans(path, offset, line, rows, 1 << 40, block)
        for span in plan.spans:
            chunk = parse_span(path, header, span.start, span.end, span.line, want_frame=True, want_copy=True)
            if chunk is None:
                fell_back = True
                chunk = parse_chunk(
                    path,
                    header,
                    span.start,
                    span.line,
                    span.records + 1,
                    want_frame=True,
                    want_copy=False,
                    end=span.end,
                )
            take(chunk)
        offset, line = plan.next_offset, plan.next_line
        if plan.eof:
            break
        if plan.anomaly:
            fell_back = True
            while True:
                chunk = parse_chunk(path, header, offset, line, rows, want_frame=True, want_copy=False)
                take(chunk)
                offset, line = chunk.next_offset, chunk.next_line
                if chunk.eof:
                    break
            break
    return (pd.concat(frames, ignore_index=True) if frames else None), errors, fell_back


def _plain(frame: pd.DataFrame) -> list[dict[Any, Any]]:
    out = []
    for row in frame.to_dict("records"):
        out.append(
            {
                k: (None if isinstance(v, float) and np.isnan(v) and k != "door_held_open_time" else v)
                for k, v in row.items()
            }
        )
    for row in out:
        row["time"] = pd.Timestamp(row["time"]).isoformat()
        row["entry_without_badge"] = bool(row["entry_without_badge"])
        row["door_held_open_time"] = float(row["door_held_open_time"])
    return out


def _assert_same(path: Path) -> bool:
    expected, expected_errors = _sequential(str(path))
    got, got_errors, fell_back = _parallel(str(path))
    assert sorted(got_errors, key=lambda e: e["line"]) == expected_errors
    if expected is None:
        assert got is None or len(got) == 0
    else:
        assert got is not None
        assert list(got.columns) == list(expected.columns)
        assert _plain(got) == _plain(expected)
    return fell_back


@pytest.mark.parametrize("seed", range(8))
def test_random_files_parse_exactly_as_the_sequential_reader(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    header = HEADERS[seed % 2]
    text = _csv_text(rng, header, rng.randrange(150, 400), crlf=seed % 3 == 0)
    if seed % 4 == 1:
        text = "\ufeff" + text
    if seed % 5 == 2:
        text = text.rstrip("\r\n")  # last record without a newline
    path = tmp_path / "events.csv"
    path.write_bytes(text.encode())
    assert not _assert_same(path)  # well-formed quoting: no record left to the csv module


@pytest.mark.parametrize(
    "odd",
    [
        'p1,x"y,Granted',  # a quote inside an unquoted field
        '"p1"x,door,Granted',  # text after a closing quote
        "p1,do\ror,Granted",  # a lone carriage return
        "p1,do\x00or,Granted",  # NUL
        'p1,"never closed,Granted',  # an unterminated quote
    ],
)
def test_quoting_only_the_csv_module_defines_is_read_by_it(tmp_path: Path, odd: str) -> None:
    rng = random.Random(11)
    text = _csv_text(rng, HEADERS[0], 120, crlf=False)
    lines = text.split("\n")
    lines.insert(60, "2025-01-01T00:00:00Z," + odd)
    path = tmp_path / "odd.csv"
    path.write_bytes("\n".join(lines).encode())
    assert _assert_same(path)


def test_bytes_that_are_not_utf8_are_read_by_the_csv_module(tmp_path: Path) -> None:
    rng = random.Random(12)
    text = _csv_text(rng, HEADERS[0], 200, crlf=False).encode()
    cut = text.index(b"\n", len(text) // 2) + 1
    path = tmp_path / "latin1.csv"
    path.write_bytes(text[:cut] + "2025-01-01T00:00:00Z,p\xe9,b,d,Granted\n".encode("latin-1") + text[cut:])
    assert _assert_same(path)


def test_scan_reports_record_starts_lines_and_fields() -> None:
    data = b'a,b\n"x\ny",z\r\n\n  \nq,"w""e",3\n'
    recs = scan_records(data, 2, final=True)
    assert recs.anomaly is None
    assert recs.lines.tolist() == [2, 3, 6, 7]  # the blank line 5 is no record
    assert recs.fields.tolist() == [2, 2, 1, 3]
    assert recs.complete == len(data)
    assert recs.next_line == 8
    cut = scan_records(data[:-5], 2, final=False)
    assert cut.complete == data.index(b"q")  # the unfinished last record is left out


def test_planned_spans_cover_the_file_on_record_boundaries(tmp_path: Path) -> None:
    rng = random.Random(5)
    path = tmp_path / "events.csv"
    path.write_text(_csv_text(rng, HEADERS[0], 1000, crlf=False))
    header: Header = read_header(str(path))
    offset, line, spans = header.data_offset, header.data_line, []
    while True:
        plan = plan_spans(str(path), offset, line, 100, 1 << 40, block=4096)
        spans += plan.spans
        offset, line = plan.next_offset, plan.next_line
        if plan.eof:
            break
        assert not plan.anomaly
    assert spans[0].start == header.data_offset
    assert spans[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))
    assert all(s.records <= 100 for s in spans)
    tight = plan_spans(str(path), header.data_offset, header.data_line, 100, budget=20_000)
    assert max(s.records for s in tight.spans) < 100  # the memory budget, not the row count, sized them


def test_values_the_database_cannot_hold_are_refused_with_their_line(tmp_path: Path) -> None:
    rows = [
        ["2025-01-01T00:00:00Z", "p1", "d1", "Granted", "ok"],  # line 2: stored
        ["9999-12-31T23:59:59-05:00", "p1", "d1", "Granted", ""],
        ["0001-01-01T00:00:00Z", "p1", "d1", "Granted", ""],
        ["9999-12-31T23:59:59.999999+00:00", "p1", "d1", "Granted", ""],
        ["2999-01-01T00:00:00Z", "p1", "d1", "Granted", ""],
        ["253402300799999", "p1", "d1", "Granted", ""],
        ["2025-01-01T00:00:00Z", "p\x00", "d1", "Granted", ""],
        ["2025-01-01T00:00:00Z", "p1", "d1", "Granted", "n\x00te"],
        ["2025-01-01T00:00:00Z", "p1", "d1", "Granted", "", "x" * 201],
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["timestamp", "person_id", "door_id", "access_result", "note"])
    writer.writerows(row[:5] for row in rows[:-1])
    writer.writerow(["2025-01-01T00:00:00Z", "p1", "d1", "Granted", ""])
    path = tmp_path / "hostile.csv"
    path.write_text(buf.getvalue())
    frame, errors = _sequential(str(path))
    assert frame is not None
    assert list(frame["line"]) == [2, 10]
    reasons = {e["line"]: e["reason"] for e in errors}
    assert set(reasons) == {3, 4, 5, 6, 7, 8, 9}
    for line in (4, 5, 6, 7):
        assert "outside the accepted window" in reasons[line] or "not a recognised" in reasons[line]
    assert "outside the accepted window" in reasons[4]
    assert "NUL" in reasons[8]
    assert "'note'" in reasons[9]
    assert "NUL" in reasons[9]
    assert _assert_same(path) is True  # the NUL rows make the parallel path defer to the csv module


def test_a_huge_header_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    import tracemalloc

    from services.analytics.uploads.csv_rows import MAX_HEADER_BYTES, HeaderError

    path = tmp_path / "wide.csv"
    with open(path, "wb") as fh:
        fh.write(b"Timestamp,Person ID,Device name,Access result")
        for _ in range(20):
            fh.write(b",c" * (1 << 19))  # 20 MiB of header
        fh.write(b"\n2025-01-01T00:00:00Z,p,d,Granted\n")
    tracemalloc.start()
    try:
        with pytest.raises(HeaderError, match="header is longer than"):
            read_header(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_HEADER_BYTES + (1 << 20)
    # An unterminated quote runs into the same bound instead of reading the file to its end.
    path.write_bytes(b'Timestamp,"Person ID\n' + b"x" * (MAX_HEADER_BYTES + 10))
    with pytest.raises(HeaderError):
        read_header(str(path))
    # A column name the store could not keep as a JSON key.
    path.write_bytes(b"Timestamp,Person ID,Device name,Access result,no\x00te\n")
    with pytest.raises(HeaderError, match="NUL"):
        read_header(str(path))
    # A normal header after blank lines is still found.
    path.write_bytes(b"\n\nTimestamp,Person ID,Device name,Access result\n2025-01-01T00:00:00Z,p,d,Granted\n")
    assert read_header(str(path)).data_line == 4
