from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

from shared.cache.keys import make_key
from shared.settings import REPO_ROOT


class Filter(BaseModel):
    start: datetime | None = None
    facility_id: str | None = None


@dataclass
class Params:
    limit: int
    share: float


def test_equal_arguments_give_equal_keys_whatever_the_order() -> None:
    assert make_key("f", (), {"a": 1, "b": {"x": [1, 2], "y": {3, 4}}}) == make_key(
        "f", (), {"b": {"y": {4, 3}, "x": [1, 2]}, "a": 1}
    )
    assert make_key("f", (1,)) != make_key("f", ("1",))
    assert make_key("f", (1,)) != make_key("g", (1,))
    assert make_key("f", (1.0,)) != make_key("f", (1,))
    assert make_key("f", ([1, 2],)) != make_key("f", ((1, 2),))


def test_models_dataclasses_and_times_are_keyed_by_value() -> None:
    t = datetime(2025, 1, 1, 12, tzinfo=UTC)
    same_instant = t.astimezone(timezone(timedelta(hours=2)))
    assert make_key("f", (Filter(start=t),)) == make_key("f", (Filter(start=same_instant),))
    assert make_key("f", (Filter(start=t),)) != make_key("f", (Filter(start=t, facility_id="x"),))
    assert make_key("f", (Params(1, 0.5),)) == make_key("f", (Params(1, 0.5),))
    assert make_key("f", (Params(1, 0.5),)) != make_key("f", (Params(2, 0.5),))


def test_dataframes_are_keyed_by_content_not_identity() -> None:
    a = pd.DataFrame({"x": range(1000), "y": ["a"] * 1000})
    b = a.copy()
    assert make_key("f", (a,)) == make_key("f", (b,))
    b.loc[999, "x"] = -1  # a change far past any truncated repr
    assert make_key("f", (a,)) != make_key("f", (b,))
    assert make_key("f", (np.arange(5),)) == make_key("f", (np.arange(5),))
    assert make_key("f", (np.arange(5),)) != make_key("f", (np.arange(6),))


def test_unstable_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="stable cache key"):
        make_key("f", (object(),))


def test_keys_are_the_same_in_another_process() -> None:
    code = (
        "from datetime import datetime, UTC; from shared.cache.keys import make_key; "
        "print(make_key('f', (), {'t': datetime(2025, 1, 1, tzinfo=UTC), 's': {'b', 'a'}, 'n': 1.5}))"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    other = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert other == make_key("f", (), {"t": datetime(2025, 1, 1, tzinfo=UTC), "s": {"a", "b"}, "n": 1.5})
