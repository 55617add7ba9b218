"""The access summary, aggregated in SQL from the rollups (no rows leave the database).

Totals, results, first and last event and events per hour come from the `time` rollup; the
busiest doors and the distinct people and doors from the `people` rollup (see
`services.analytics.rollups` for how a range is split between rollups and raw rows).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from services.analytics import rollups
from services.analytics.filters import EventFilter

_TOTALS_SQL = """
SELECT coalesce(sum(n), 0) AS total,
       coalesce(sum(n) FILTER (WHERE access_result = 'Granted'), 0) AS granted,
       coalesce(sum(n) FILTER (WHERE access_result = 'Denied'), 0) AS denied,
       coalesce(sum(n) FILTER (WHERE access_result = 'Timeout'), 0) AS timeout,
       coalesce(sum(n) FILTER (WHERE access_result = 'Error'), 0) AS error,
       min(first_time) AS first_event, max(last_time) AS last_event
FROM ({parts}) AS p
"""
_BY_HOUR_SQL = "SELECT hr AS hour, sum(n) AS n FROM ({parts}) AS p GROUP BY hr"
_DISTINCT_SQL = """
SELECT count(DISTINCT person_id) AS unique_people, count(DISTINCT door_id) AS unique_doors
FROM ({parts}) AS p
"""
_TOP_DOORS_SQL = """
SELECT door_id, sum(n) AS n, coalesce(sum(n) FILTER (WHERE access_result = 'Denied'), 0) AS denied
FROM ({parts}) AS p GROUP BY door_id ORDER BY n DESC, door_id LIMIT {limit}
"""


async def access_summary(
    pool: asyncpg.Pool, flt: EventFilter, top: int = 10, *, use_rollups: bool = True
) -> dict[str, Any]:
    async with rollups.snapshot(pool, use_rollups=use_rollups) as (conn, mark):
        p = rollups.Params()
        time_parts = rollups.parts(rollups.TIME, flt, ["access_result"], p, mark)
        totals = await conn.fetchrow(_TOTALS_SQL.format(parts=time_parts), *p.values)
        p = rollups.Params()
        hour_parts = rollups.parts(rollups.TIME, flt, ["hr"], p, mark)
        by_hour_rows = await conn.fetch(_BY_HOUR_SQL.format(parts=hour_parts), *p.values)
        p = rollups.Params()
        people_parts = rollups.parts(rollups.PEOPLE, flt, ["person_id", "door_id"], p, mark)
        distinct = await conn.fetchrow(_DISTINCT_SQL.format(parts=people_parts), *p.values)
        p = rollups.Params()
        door_parts = rollups.parts(rollups.PEOPLE, flt, ["door_id", "access_result"], p, mark)
        limit = p.add(top)
        top_rows = await conn.fetch(_TOP_DOORS_SQL.format(parts=door_parts, limit=limit), *p.values)
    assert totals is not None  # noqa: S101  type narrowing for mypy: an aggregate returns one row
    assert distinct is not None  # noqa: S101  same
    total = int(totals["total"])
    by_hour = {str(h): 0 for h in range(24)}
    for row in by_hour_rows:
        by_hour[str(row["hour"])] = int(row["n"])
    return {
        "total_events": total,
        "granted": int(totals["granted"]),
        "denied": int(totals["denied"]),
        "timeout": int(totals["timeout"]),
        "error": int(totals["error"]),
        "success_rate": round(int(totals["granted"]) / total, 6) if total else None,
        "unique_people": int(distinct["unique_people"]),
        "unique_doors": int(distinct["unique_doors"]),
        "first_event": totals["first_event"].isoformat() if totals["first_event"] else None,
        "last_event": totals["last_event"].isoformat() if totals["last_event"] else None,
        "by_hour": by_hour,
        "top_doors": [
            {"door_id": r["door_id"], "events": int(r["n"]), "denied": int(r["denied"])} for r in top_rows
        ],
        "filters": flt.model_dump(mode="json"),
    }
