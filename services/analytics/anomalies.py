"""Anomaly detection over stored events; every finding carries its evidence.

Kinds found:
- `denial_burst`: at least `burst_min_denials` denials for one person within `burst_window_s`;
- `unusual_hour`: an access at an hour the person (with at least `history_min_events` events)
  almost never uses: fewer than `unusual_hour_max_share` of their other events fall within
  one hour of it (on the 24-hour circle);
- `invalid_badge_granted`: granted although the badge was expired or suspended;
- `door_held_open`: door held open longer than `held_open_threshold_s`;
- `entry_without_badge`: an entry recorded without a badge.

Filtering (denials, per-person hour histograms, flagged rows) happens in SQL; the burst and
hour-profile logic runs in pandas in a worker process on those already small sets. The hour
profiles come from the hour rollups (`rollups.HOURS`, primary migration 0007) for the whole
days and weeks of the window, raw rows only for its partial days and for rows not rolled up
yet; denials and flagged rows are found through partial indexes on event time.

The analysis always runs over a bounded window (`AnomalyWindow`): without `start` it covers the
`default` span up to `end` (or up to the newest stored event), and a request spanning more than
`maximum` is refused with 422, so no request makes the service load every denial ever stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import numpy as np
import pandas as pd

from services.analytics import rollups
from services.analytics.filters import EventFilter
from shared.performance.operation import named_operation


@dataclass(frozen=True)
class AnomalyParameters:
    burst_min_denials: int = 3
    burst_window_s: float = 60.0
    history_min_events: int = 20
    unusual_hour_max_share: float = 0.02
    held_open_threshold_s: float = 30.0
    limit: int = 100  # findings listed per kind; `counts` always has the full numbers


@dataclass(frozen=True)
class AnomalyWindow:
    default: timedelta = timedelta(days=31)
    maximum: timedelta = timedelta(days=92)


class WindowTooLarge(ValueError):
    """The filter spans more than the analysis may cover (422)."""


_NEWEST_SQL = "SELECT max(time) FROM access_events{where}"


async def newest_event(pool: asyncpg.Pool, flt: EventFilter) -> datetime | None:
    """The time of the newest event matching the filter's facility (and before its end)."""
    where, args = flt.model_copy(update={"start": None}).where()
    newest: datetime | None = await pool.fetchval(_NEWEST_SQL.format(where=where), *args)
    return newest


def bounded_filter(flt: EventFilter, newest: datetime | None, window: AnomalyWindow) -> EventFilter:
    """`flt` with both ends set and at most `window.maximum` apart, or WindowTooLarge.

    Without `end` the window ends just past the newest event (`newest`; now when there is
    none); without `start` it begins `window.default` before its end.
    """
    end = flt.end
    if end is None:
        end = newest + timedelta(microseconds=1) if newest is not None else datetime.now(UTC)
    start = flt.start if flt.start is not None else end - window.default
    if end - start > window.maximum:
        raise WindowTooLarge(
            f"the anomaly analysis covers at most {window.maximum.days} days; "
            f"the filter spans {(end - start).days} days: narrow start and end"
        )
    return flt.model_copy(update={"start": start, "end": end})


_DENIALS_SQL = """
SELECT event_id, person_id, door_id, time FROM access_events
WHERE access_result = 'Denied'{and_where} ORDER BY person_id, time, event_id
"""
# The people with at least one burst: a burst starts at a denial when the person's
# (burst_min_denials - 1)-th next denial is at most burst_window_s later (what
# `find_denial_bursts` tests; the order of equal times does not change which times follow).
# Only their denials are fetched: no finding involves anyone else. Two narrow columns are
# sorted rather than whole rows. The window is whole microseconds, rounded down like the
# detector's nanoseconds compared with microsecond times.
_BURST_PEOPLE_SQL = """
SELECT DISTINCT person_id FROM (
    SELECT person_id, time, lead(time, {k}) OVER (PARTITION BY person_id ORDER BY time) AS kth
    FROM access_events WHERE access_result = 'Denied'{and_where}
) AS d
WHERE kth <= time + {w}::bigint * interval '1 microsecond'
"""
_HOUR_PROFILE_SQL = """
SELECT person_id, extract(hour FROM time AT TIME ZONE 'UTC')::int AS hr, count(*) AS n
FROM access_events{where} GROUP BY 1, 2
"""
# The same (person_id, hr, n) cells from the hour rollups' one-column-per-hour rows.
_HOUR_PROFILE_FROM_PARTS_SQL = (
    "SELECT people.person_id, u.hr, u.n FROM (SELECT person_id, "  # noqa: S608  fixed SQL text
    + ", ".join(f"sum({c}) AS {c}" for c in rollups.HOURS_OF_DAY)
    + " FROM ({parts}) AS parts GROUP BY person_id) AS people "
    + "CROSS JOIN LATERAL unnest(ARRAY["
    + ", ".join(str(h) for h in range(24))
    + "]::int[], ARRAY["
    + ", ".join(f"people.{c}" for c in rollups.HOURS_OF_DAY)
    + "]::bigint[]) AS u(hr, n) WHERE u.n > 0"
)
_EVENTS_AT_HOURS_SQL = """
SELECT e.event_id, e.person_id, e.door_id, e.time, e.access_result
FROM access_events e
JOIN unnest(${p}::text[], ${h}::int[]) AS u(person_id, hr)
  ON e.person_id = u.person_id AND extract(hour FROM e.time AT TIME ZONE 'UTC')::int = u.hr
{where} ORDER BY e.person_id, e.time, e.event_id
"""
_FLAGGED_SQL = {
    "invalid_badge_granted": "access_result = 'Granted' AND badge_status IN ('Expired', 'Suspended')",
    "door_held_open": "door_held_open_time > ${t}",
    "entry_without_badge": "entry_without_badge",
}
# Migration 0007's partial index holds the doors held open longer than this: a threshold at or
# above it adds the bound to the query (the same rows) so that the index can answer it.
HELD_OPEN_INDEX_FLOOR_S = 30.0
_HELD_OPEN_INDEXED = f" AND door_held_open_time > {HELD_OPEN_INDEX_FLOOR_S:g}"
_FLAGGED_COLUMNS = (
    "event_id, time, person_id, door_id, badge_id, access_result, badge_status, "
    "door_held_open_time, entry_without_badge"
)


def _and(where: str) -> str:
    return where.replace(" WHERE ", " AND ", 1)


def _frame(rows: list[asyncpg.Record], columns: list[str]) -> pd.DataFrame:
    """`rows` as a frame, built column by column: a dict per row took as long as the query."""
    if not rows:
        return pd.DataFrame([], columns=columns)
    return pd.DataFrame({c: [r[i] for r in rows] for i, c in enumerate(columns)}, columns=columns)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], frame.to_dict("records"))


def find_denial_bursts(denials: pd.DataFrame, params: AnomalyParameters) -> list[dict[str, Any]]:
    """Maximal runs of one person's denials in which every event lies in some window of
    `burst_window_s` seconds holding at least `burst_min_denials` denials."""
    findings: list[dict[str, Any]] = []
    window = np.timedelta64(int(params.burst_window_s * 1e9), "ns")
    for person, group in denials.groupby("person_id", sort=True):
        if len(group) < params.burst_min_denials:
            continue
        times = pd.to_datetime(group["time"], utc=True).to_numpy(dtype="datetime64[ns]")
        ends = np.searchsorted(times, times + window, side="right")
        marked = np.zeros(len(times) + 1, dtype=np.int64)
        for first_idx in np.flatnonzero(ends - np.arange(len(times)) >= params.burst_min_denials):
            marked[first_idx] += 1
            marked[ends[first_idx]] -= 1
        in_burst = np.cumsum(marked)[:-1] > 0
        start: int | None = None
        for i in range(len(times) + 1):
            if i < len(times) and in_burst[i]:
                start = i if start is None else start
                continue
            if start is not None:
                rows = group.iloc[start:i]
                first, last = pd.Timestamp(times[start]), pd.Timestamp(times[i - 1])
                findings.append(
                    {
                        "type": "denial_burst",
                        "severity": "high",
                        "person_id": str(person),
                        "time": first.tz_localize("UTC").isoformat(),
                        "description": f"{len(rows)} denials for {person} within "
                        f"{(last - first).total_seconds():g} s",
                        "evidence": {
                            "denials": len(rows),
                            "first": first.tz_localize("UTC").isoformat(),
                            "last": last.tz_localize("UTC").isoformat(),
                            "span_seconds": (last - first).total_seconds(),
                            "window_seconds": params.burst_window_s,
                            "events": [
                                {
                                    "event_id": r["event_id"],
                                    "time": pd.Timestamp(r["time"]).isoformat(),
                                    "door_id": r["door_id"],
                                }
                                for r in _records(rows)
                            ],
                        },
                    }
                )
                start = None
    return findings


def unusual_hour_cells(profile: pd.DataFrame, params: AnomalyParameters) -> pd.DataFrame:
    """(person_id, hr) cells whose events are unusual for that person, with the numbers why."""
    if profile.empty:
        return profile.assign(total=[], nearby_other=[], share=[])
    grid = profile.pivot_table(index="person_id", columns="hr", values="n", aggfunc="sum", fill_value=0)
    grid = grid.reindex(columns=range(24), fill_value=0)
    totals = grid.sum(axis=1)
    grid = grid[totals >= params.history_min_events]
    totals = totals[grid.index]
    nearby = grid + grid.shift(1, axis=1, fill_value=0) + grid.shift(-1, axis=1, fill_value=0)
    nearby[0] += grid[23]
    nearby[23] += grid[0]
    counts, near, total_arr = grid.to_numpy(), nearby.to_numpy(), totals.to_numpy()
    cells = []
    for r, person in enumerate(str(p) for p in grid.index):
        usual = [int(h) for h in np.argsort(-counts[r], kind="stable")[:3] if counts[r][h] > 0]
        for hr in (int(h) for h in np.flatnonzero(counts[r] > 0)):
            others = int(near[r][hr]) - 1
            share = others / (int(total_arr[r]) - 1)
            if share < params.unusual_hour_max_share:
                cells.append(
                    {
                        "person_id": person,
                        "hr": hr,
                        "total": int(total_arr[r]),
                        "nearby_other": others,
                        "share": share,
                        "usual_hours": usual,
                    }
                )
    return pd.DataFrame(cells, columns=["person_id", "hr", "total", "nearby_other", "share", "usual_hours"])


def describe_unusual(
    events: pd.DataFrame, cells: pd.DataFrame, params: AnomalyParameters
) -> list[dict[str, Any]]:
    by_cell = {(c["person_id"], c["hr"]): c for c in _records(cells)}
    findings = []
    for ev in _records(events):
        ts = pd.Timestamp(ev["time"])
        cell = by_cell[(ev["person_id"], ts.tz_convert("UTC").hour)]
        findings.append(
            {
                "type": "unusual_hour",
                "severity": "medium",
                "person_id": ev["person_id"],
                "time": ts.isoformat(),
                "description": f"{ev['person_id']} accessed {ev['door_id']} at "
                f"{ts.tz_convert('UTC'):%H:%M} UTC; "
                f"{cell['nearby_other']} of their other {cell['total'] - 1} events fall within an hour "
                f"of that time",
                "evidence": {
                    "event_id": ev["event_id"],
                    "door_id": ev["door_id"],
                    "access_result": ev["access_result"],
                    "hour": cell["hr"],
                    "history_events": cell["total"],
                    "nearby_events": cell["nearby_other"],
                    "nearby_share": round(cell["share"], 6),
                    "threshold": params.unusual_hour_max_share,
                    "usual_hours": cell["usual_hours"],
                },
            }
        )
    return findings


def _flag_finding(kind: str, row: asyncpg.Record, params: AnomalyParameters) -> dict[str, Any]:
    ev = {k: (v.isoformat() if k == "time" else v) for k, v in dict(row).items()}
    if kind == "invalid_badge_granted":
        description = f"{row['person_id']} was granted at {row['door_id']} with a {row['badge_status']} badge"
        severity = "high"
    elif kind == "door_held_open":
        description = (
            f"door {row['door_id']} held open {row['door_held_open_time']:g} s "
            f"(threshold {params.held_open_threshold_s:g} s)"
        )
        severity = "medium"
    else:
        description = f"entry without badge at {row['door_id']} attributed to {row['person_id']}"
        severity = "high"
    return {
        "type": kind,
        "severity": severity,
        "person_id": row["person_id"],
        "door_id": row["door_id"],
        "time": ev["time"],
        "description": description,
        "evidence": ev,
    }


@named_operation("db.anomaly_inputs")
async def fetch_inputs(
    pool: asyncpg.Pool, flt: EventFilter, params: AnomalyParameters, *, use_rollups: bool = True
) -> dict[str, Any]:
    """Everything the detectors need, filtered and reduced in SQL, read in one snapshot: the
    hour profiles from the rollups, the denials of people with a burst. With
    `use_rollups=False`, the previous plan: profiles from raw rows and every denial of the
    window (the reference the tests and `bench patterns` compare the answers with)."""
    where, args = flt.where()
    async with rollups.snapshot(pool, use_rollups=use_rollups) as (conn, mark):
        if mark is None:
            denial_rows = await conn.fetch(_DENIALS_SQL.format(and_where=_and(where)), *args)
        else:
            k, w = f"${len(args) + 1}", f"${len(args) + 2}"
            people = await conn.fetch(
                _BURST_PEOPLE_SQL.format(k=k, w=w, and_where=_and(where)),
                *args,
                params.burst_min_denials - 1,
                int(params.burst_window_s * 1e9) // 1000,
            )
            denial_rows = []
            if people:
                only = f" AND person_id = ANY(${len(args) + 1}::text[])" + _and(where)
                denial_rows = await conn.fetch(
                    _DENIALS_SQL.format(and_where=only), *args, [r["person_id"] for r in people]
                )
        if mark is None:
            profile_rows = await conn.fetch(_HOUR_PROFILE_SQL.format(where=where), *args)
        else:
            p = rollups.Params()
            hour_parts = rollups.parts(rollups.HOURS, flt, ["person_id"], p, mark)
            profile_rows = await conn.fetch(_HOUR_PROFILE_FROM_PARTS_SQL.format(parts=hour_parts), *p.values)
        flagged: dict[str, list[asyncpg.Record]] = {}
        counts: dict[str, int] = {}
        for kind, condition in _FLAGGED_SQL.items():
            extra: list[Any] = []
            if "${t}" in condition:
                extra = [params.held_open_threshold_s]
                condition = condition.replace("${t}", f"${len(args) + 1}")
                if params.held_open_threshold_s >= HELD_OPEN_INDEX_FLOOR_S:
                    condition += _HELD_OPEN_INDEXED
            full_where = f" WHERE {condition}" + _and(where)
            counts[kind] = int(
                await conn.fetchval(f"SELECT count(*) FROM access_events{full_where}", *args, *extra)  # noqa: S608  fixed SQL fragments; every value is a $n parameter
            )
            flagged[kind] = await conn.fetch(
                f"SELECT {_FLAGGED_COLUMNS} FROM access_events{full_where} ORDER BY time, event_id "  # noqa: S608  fixed SQL fragments; every value is a $n parameter
                f"LIMIT {int(params.limit)}",
                *args,
                *extra,
            )
    denials = _frame(denial_rows, ["event_id", "person_id", "door_id", "time"])
    profile = _frame(profile_rows, ["person_id", "hr", "n"])
    return {"denials": denials, "profile": profile, "flagged": flagged, "flag_counts": counts}


@named_operation("db.unusual_events")
async def fetch_unusual_events(pool: asyncpg.Pool, flt: EventFilter, cells: pd.DataFrame) -> pd.DataFrame:
    columns = ["event_id", "person_id", "door_id", "time", "access_result"]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    where, args = flt.where(first_param=3)
    sql = _EVENTS_AT_HOURS_SQL.format(
        p=1, h=2, where=where.replace("time", "e.time").replace("facility_id", "e.facility_id")
    )
    rows = await pool.fetch(sql, list(cells["person_id"]), [int(h) for h in cells["hr"]], *args)
    return _frame(rows, columns)


def detect_in_frames(
    denials: pd.DataFrame, profile: pd.DataFrame, params: AnomalyParameters
) -> dict[str, Any]:
    """The pandas half (runs in a worker process): bursts and unusual-hour cells."""
    return {"bursts": find_denial_bursts(denials, params), "cells": unusual_hour_cells(profile, params)}


def assemble(
    inputs: dict[str, Any],
    detected: dict[str, Any],
    unusual_events: pd.DataFrame,
    params: AnomalyParameters,
    flt: EventFilter,
) -> dict[str, Any]:
    unusual = describe_unusual(unusual_events, detected["cells"], params)
    bursts = detected["bursts"]
    counts = {"denial_burst": len(bursts), "unusual_hour": len(unusual), **inputs["flag_counts"]}
    findings = bursts[: params.limit] + unusual[: params.limit]
    for kind, rows in inputs["flagged"].items():
        findings.extend(_flag_finding(kind, row, params) for row in rows)
    findings.sort(key=lambda f: (f["time"], f["type"], f.get("person_id") or ""))
    return {
        "total": sum(counts.values()),
        "counts": counts,
        "truncated": {kind: n > params.limit for kind, n in counts.items()},
        "anomalies": findings,
        "parameters": asdict(params),
        "filters": flt.model_dump(mode="json"),
    }
