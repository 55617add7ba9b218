"""How a range is split between rollup levels and raw rows: the pieces partition the range
exactly, every rollup piece is whole buckets of its level, raw rows are only read for less
than one fine bucket at each end, and coarse buckets marked stale are read from the fine level."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.analytics.rollups import Piece, ceil_to, cover, floor_to

LEVELS = ("month", "day")
instants = st.datetimes(
    min_value=datetime(2023, 11, 1), max_value=datetime(2025, 3, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
bounds = st.one_of(st.none(), instants)


def _aligned(t: datetime | None, level: str) -> bool:
    return t is None or floor_to(t, level) == t  # type: ignore[arg-type]


@pytest.mark.parametrize("levels", [LEVELS, ("week", "day")])
@given(start=bounds, end=bounds)
def test_pieces_partition_the_range(
    levels: tuple[str, ...], start: datetime | None, end: datetime | None
) -> None:
    _assert_partition(cover(start, end, levels), start, end)  # type: ignore[arg-type]


def _assert_partition(pieces: list[Piece], start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        assert pieces == []
        return
    assert pieces[0].start == start
    assert pieces[-1].end == end
    for before, after in itertools.pairwise(pieces):
        assert before.end is not None
        assert before.end == after.start
    for piece in pieces:
        if piece.start is not None and piece.end is not None:
            assert piece.start < piece.end
        if piece.level is not None:
            assert _aligned(piece.start, piece.level)
            assert _aligned(piece.end, piece.level)
    raw = [p for p in pieces if p.level is None]
    assert len(raw) <= 2
    for piece in raw:
        assert piece.start is not None
        assert piece.end is not None
        assert piece.end - piece.start < timedelta(days=1)


@given(start=instants, end=instants)
def test_whole_months_come_from_the_month_level(start: datetime, end: datetime) -> None:
    months = [p for p in cover(start, end, LEVELS) if p.level == "month"]
    first, last = ceil_to(start, "month"), floor_to(end, "month")
    if first < last:
        assert months == [Piece("month", first, last)]
    else:
        assert months == []


def test_unbounded_range_is_one_month_piece() -> None:
    assert cover(None, None, LEVELS) == [Piece("month", None, None)]


def test_naive_times_are_utc() -> None:
    pieces = cover(datetime(2025, 1, 15, 12), datetime(2025, 3, 2), LEVELS)
    assert pieces[0] == Piece(None, datetime(2025, 1, 15, 12, tzinfo=UTC), datetime(2025, 1, 16, tzinfo=UTC))
    assert Piece("month", datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)) in pieces
    assert pieces[-1] == Piece("day", datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC))


@given(start=instants, end=instants)
def test_weeks_are_iso_weeks_and_whole_ones_come_from_the_week_level(start: datetime, end: datetime) -> None:
    pieces = cover(start, end, ("week", "day"))
    weeks = [p for p in pieces if p.level == "week"]
    first, last = ceil_to(start, "week"), floor_to(end, "week")
    if first < last:
        assert weeks == [Piece("week", first, last)]
        assert first.weekday() == 0
        assert first.time() == datetime.min.time()
    else:
        assert weeks == []
    # days only for the partial weeks: less than a week at each end
    assert all(p.end - p.start < timedelta(days=7) for p in pieces if p.level == "day" and p.start and p.end)


@pytest.mark.parametrize("levels", [LEVELS, ("week", "day")])
@given(start=bounds, end=bounds, marked=st.lists(instants, max_size=6))
def test_stale_coarse_buckets_are_read_from_the_finer_level(
    levels: tuple[str, ...], start: datetime | None, end: datetime | None, marked: list[datetime]
) -> None:
    coarse = levels[0]
    stale = frozenset(floor_to(t, coarse) for t in marked)  # type: ignore[arg-type]
    pieces = cover(start, end, levels, stale)  # type: ignore[arg-type]
    _assert_partition(pieces, start, end)
    for piece in pieces:
        if piece.level == coarse:
            assert not any(
                (piece.start is None or b >= piece.start) and (piece.end is None or b < piece.end)
                for b in stale
            ), piece
    # Nothing else changes: the coarse level covers what it covered, less the stale buckets,
    # which the finer level covers whole.
    fine = [p for p in pieces if p.level == levels[1]]
    for piece in cover(start, end, levels):  # type: ignore[arg-type]
        if piece.level == coarse:
            for bucket in stale:
                inside = (piece.start is None or bucket >= piece.start) and (
                    piece.end is None or bucket < piece.end
                )
                if inside:
                    following = ceil_to(bucket + timedelta(seconds=1), coarse)  # type: ignore[arg-type]
                    assert any(p.start <= bucket and following <= p.end for p in fine)  # type: ignore[operator]


def test_a_stale_month_inside_an_unbounded_range() -> None:
    march = datetime(2025, 3, 1, tzinfo=UTC)
    assert cover(None, None, LEVELS, frozenset({march})) == [
        Piece("month", None, march),
        Piece("day", march, datetime(2025, 4, 1, tzinfo=UTC)),
        Piece("month", datetime(2025, 4, 1, tzinfo=UTC), None),
    ]


def test_consecutive_stale_months_are_one_piece() -> None:
    """A backfill of years marks every month it touched until they are built: each run of them
    is one range of days, not a branch of the query per month."""
    stale = frozenset(datetime(year, month, 1, tzinfo=UTC) for year in (2022, 2023) for month in range(1, 13))
    pieces = cover(datetime(2021, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC), LEVELS, stale)
    assert pieces == [
        Piece("month", datetime(2021, 6, 1, tzinfo=UTC), datetime(2022, 1, 1, tzinfo=UTC)),
        Piece("day", datetime(2022, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)),
        Piece("month", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)),
    ]
