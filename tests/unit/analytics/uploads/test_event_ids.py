"""The column-wise event id derivation equals `shared.events.derive_event_id` row by row."""

from __future__ import annotations

import random
import uuid

import pyarrow as pa
import pytest

from services.analytics.uploads.event_ids import IdField, derive_event_ids
from shared.events import UPLOAD_NAMESPACE, derive_event_id

# Characters JSON must escape, characters it must not, multi-byte UTF-8 and CSV punctuation.
ODD = [
    '"',
    "\\",
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x08",
    "\x0c",
    "\x1f",
    "\x7f",
    "é",
    "€",
    "\u2028",
    "𝄞",
    ",",
    "'",
    "/",
]
PLAIN = list("abcXYZ0189 -_:.+T")


def _value(rng: random.Random, odd: float) -> str:
    length = rng.choice([0, 0, 1, 2, 5, 12, 40])
    return "".join(rng.choice(ODD) if rng.random() < odd else rng.choice(PLAIN) for _ in range(length))


def _compare(keys: list[tuple[str, bool]], rows: int, odd: float, seed: int) -> None:
    rng = random.Random(seed)
    columns = {key: [_value(rng, odd) for _ in range(rows)] for key, _ in keys}
    fields = [IdField(key, pa.array(columns[key], type=pa.string()), omit) for key, omit in keys]
    batch = derive_event_ids(fields, rows).to_pylist()
    expected = [
        derive_event_id({key: columns[key][i] for key, omit in keys if not (omit and columns[key][i] == "")})
        for i in range(rows)
    ]
    assert batch == expected


REQUIRED_FIELDS = [("timestamp", False), ("person_id", False), ("door_id", False), ("access_result", False)]


@pytest.mark.parametrize("odd", [0.0, 0.05, 0.5])
def test_required_fields_only(odd: float) -> None:
    _compare(REQUIRED_FIELDS, 3_000, odd, seed=int(odd * 100))


def test_extra_columns_are_left_out_when_empty_and_sorted_by_code_point() -> None:
    keys = [
        *REQUIRED_FIELDS,
        ("badge_id", False),
        ("Firmware", True),  # upper case sorts before the lower-case field names
        ("zone", True),
        ("é-extra", True),  # after every ASCII key
        ('a"b\\c', True),  # a key that needs escaping itself
        ("", True),
    ]
    _compare(keys, 3_000, 0.1, seed=7)


def test_every_field_empty_and_only_extras() -> None:
    _compare([("a", True), ("b", True)], 500, 0.0, seed=3)  # includes rows that are "{}"


def test_duplicate_keys_keep_the_last_value_as_the_dict_does() -> None:
    values = pa.array(["x", "y"], type=pa.string())
    other = pa.array(["1", ""], type=pa.string())
    ids = derive_event_ids([IdField("k", values), IdField("k", other, omit_empty=True)], 2).to_pylist()
    assert ids == [derive_event_id({"k": "1"}), derive_event_id({"k": "y"})]


def test_a_known_row_keeps_its_id_across_versions() -> None:
    # The id of an uploaded row must never change, or re-uploads would store rows twice.
    row = {
        "access_result": "Granted",
        "door_id": "d1",
        "person_id": "p1",
        "timestamp": "2025-01-01T00:00:00Z",
    }
    canonical = (
        '{"access_result":"Granted","door_id":"d1","person_id":"p1","timestamp":"2025-01-01T00:00:00Z"}'
    )
    assert derive_event_id(row) == str(uuid.uuid5(UPLOAD_NAMESPACE, canonical))
    fields = [IdField(k, pa.array([v], type=pa.string())) for k, v in row.items()]
    assert derive_event_ids(fields, 1).to_pylist() == [derive_event_id(row)]


def test_no_rows() -> None:
    assert derive_event_ids([IdField("a", pa.array([], type=pa.string()))], 0).to_pylist() == []
