"""Validated upload rows as columns, and as a PostgreSQL binary COPY payload built column-wise.

Binary COPY spares the server parsing text (timestamps, numbers, booleans), the largest part
of a COPY's cost after the index updates. The payload is assembled with Arrow's element-wise
concatenation, one row per element, so no Python object is made per row; asyncpg's own binary
COPY (`copy_records_to_table`) would need a tuple of Python objects per row. The layout is the
one documented for `COPY ... (FORMAT binary)`: a signature, then per row a 16-bit field count
and per field a 32-bit length (-1 = NULL) and the value in the type's binary send format.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["COPY_SIGNATURE", "EventColumns", "encode_copy_binary"]

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_EPOCH_2000_US = 946_684_800_000_000  # PostgreSQL counts timestamps from 2000-01-01 UTC
_JSONB_VERSION = b"\x01"


@dataclass
class EventColumns:
    """Rows of `access_events` (EVENT_COLUMNS order), one array per column."""

    event_id: pa.Array
    time_us: np.ndarray  # int64 microseconds since 1970-01-01 UTC
    person_id: pa.Array
    door_id: pa.Array
    badge_id: pa.Array  # null = none
    access_result: pa.Array
    badge_status: pa.Array  # null = none
    door_held_open_time: np.ndarray  # float64
    entry_without_badge: np.ndarray  # bool
    device_status: pa.Array
    facility_id: pa.Array  # null = none
    extra: pa.Array  # JSON text, null = none

    def __len__(self) -> int:
        return len(self.time_us)

    def take(self, index: np.ndarray) -> EventColumns:
        arrow_index = pa.array(index, type=pa.int64())
        values = {}
        for f in fields(self):
            column = getattr(self, f.name)
            values[f.name] = column[index] if isinstance(column, np.ndarray) else column.take(arrow_index)
        return EventColumns(**values)

    @staticmethod
    def concat(parts: list[tuple[EventColumns, np.ndarray]]) -> tuple[EventColumns, np.ndarray]:
        """The parts' rows together, ordered by file line."""
        lines = np.concatenate([p[1] for p in parts])
        values = {}
        for f in fields(EventColumns):
            columns = [getattr(p[0], f.name) for p in parts]
            if isinstance(columns[0], np.ndarray):
                values[f.name] = np.concatenate(columns)
            else:
                values[f.name] = pa.concat_arrays([c.cast(pa.string()) for c in columns])
        merged = EventColumns(**values)
        if len(parts) > 1:
            order = np.argsort(lines, kind="stable")
            merged, lines = merged.take(order), lines[order]
        return merged, lines

    def to_frame(self) -> pd.DataFrame:
        """As `read_csv_chunks` yields them: EVENT_COLUMNS with `time` a UTC timestamp."""
        return pd.DataFrame(
            {
                "event_id": self.event_id.to_pylist(),
                "time": pd.to_datetime(self.time_us, unit="us", utc=True),
                "person_id": self.person_id.to_pylist(),
                "door_id": self.door_id.to_pylist(),
                "badge_id": self.badge_id.to_pylist(),
                "access_result": self.access_result.to_pylist(),
                "badge_status": self.badge_status.to_pylist(),
                "door_held_open_time": self.door_held_open_time,
                "entry_without_badge": self.entry_without_badge,
                "device_status": self.device_status.to_pylist(),
                "facility_id": self.facility_id.to_pylist(),
                "extra": self.extra.to_pylist(),
            }
        )


def _fixed(values: np.ndarray) -> pa.Array:
    """Each row's bytes of a 2-D uint8 array (or a structured array) as one binary value."""
    n = len(values)
    width = values.dtype.itemsize if values.ndim == 1 else values.shape[1] * values.itemsize
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(values.tobytes())]
    )


def _length_prefix(values: pa.Array) -> pa.Array:
    lengths = pc.fill_null(pc.binary_length(values), -1).to_numpy(zero_copy_only=False)
    return _fixed(lengths.astype(">i4"))


def encode_copy_binary(columns: EventColumns) -> bytes:
    """The rows as a complete `COPY access_events (EVENT_COLUMNS) FROM STDIN (FORMAT binary)` body."""
    n = len(columns)
    if n == 0:
        return COPY_SIGNATURE + _TRAILER
    stamp = np.empty(n, dtype=[("len", ">i4"), ("value", ">i8")])
    stamp["len"] = 8
    stamp["value"] = columns.time_us - _EPOCH_2000_US
    flags = np.empty(n, dtype=[("held_len", ">i4"), ("held", ">f8"), ("entry_len", ">i4"), ("entry", "u1")])
    flags["held_len"] = 8
    flags["held"] = columns.door_held_open_time
    flags["entry_len"] = 1
    flags["entry"] = columns.entry_without_badge
    # jsonb's binary form is a version byte and the JSON text; a null stays null.
    extra_value = pc.binary_join_element_wise(_JSONB_VERSION, columns.extra.cast(pa.binary()), b"")

    def text(values: pa.Array) -> list[pa.Array]:
        data = values.cast(pa.binary())
        return [_length_prefix(data), pc.fill_null(data, b"")]  # NULL: length -1, no bytes

    parts = [
        _fixed(np.full(n, 12, dtype=">i2")),  # the field count
        *text(columns.event_id),
        _fixed(stamp),
        *text(columns.person_id),
        *text(columns.door_id),
        *text(columns.badge_id),
        *text(columns.access_result),
        *text(columns.badge_status),
        _fixed(flags),
        *text(columns.device_status),
        *text(columns.facility_id),
        _length_prefix(extra_value),
        pc.fill_null(extra_value, b""),
    ]
    rows = pc.binary_join_element_wise(*parts, b"")
    if len(rows) != n or rows.null_count:
        raise RuntimeError("binary COPY rows do not match the input rows")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
    first, last = int(offsets[rows.offset]), int(offsets[rows.offset + n])
    body = rows.buffers()[2]
    payload: bytes = body.to_pybytes()[first:last]
    return COPY_SIGNATURE + payload + _TRAILER
