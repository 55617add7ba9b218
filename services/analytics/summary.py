"""The access summary, aggregated in SQL from the rollups (only aggregate rows leave the database).

Totals, results, first and last event and events per hour come from the `time` rollup; the
busiest doors and the distinct people and doors from the `people` rollup (see
`services.analytics.rollups` for how a range is split between rollups and raw rows).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from services.analytics import rollups
from services.analytics.filters import EventFilter
from shared.performance.operation import named_operation

# One pass over the `time` parts: per hour of day and per result (g = GROUPING bit mask, hr=2
# access_result=1, set for the column NOT in the set).
_TIME_SQL = """
SELECT GROUPING(hr, access_result) AS g, hr, access_result,
       sum(n) AS n, min(first_time) AS first_event, max(last_time) AS last_event
FROM ({parts}) AS p GROUP BY GROUPING SETS ((hr), (access_result))
"""
_G_HOUR = 0b01  # grouped by hr
_G_RESULT = 0b10  # grouped by access_result
# Distinct people by hashing (count(DISTINCT) sorts every part row).
_PEOPLE_SQL = "SELECT count(*) FROM (SELECT person_id FROM ({parts}) AS p GROUP BY person_id) AS people"
# Every door with its counts: the number of doors and the busiest ones from one aggregate.
_DOORS_SQL = """
SELECT door_id, sum(n) AS n, coalesce(sum(n) FILTER (WHERE access_result = 'Denied'), 0) AS denied
FROM ({parts}) AS p GROUP BY door_id ORDER BY n DESC, door_id
"""


@named_operation("db.analytics_summary")
async def access_summary(
    pool: asyncpg.Pool, flt: EventFilter, top: int = 10, *, use_rollups: bool = True
) -> dict[str, Any]:
    async with rollups.snapshot(pool, use_rollups=use_rollups) as (conn, mark):
        p = rollups.Params()
        time_parts = rollups.parts(rollups.TIME, flt, ["hr", "access_result"], p, mark)
        time_rows = await conn.fetch(_TIME_SQL.format(parts=time_parts), *p.values)
        p = rollups.Params()
        people_parts = rollups.parts(rollups.PEOPLE, flt, ["person_id"], p, mark)
        unique_people = int(await conn.fetchval(_PEOPLE_SQL.format(parts=people_parts), *p.values))
        p = rollups.Params()
        door_parts = rollups.parts(rollups.PEOPLE, flt, ["door_id", "access_result"], p, mark)
        door_rows = await conn.fetch(_DOORS_SQL.format(parts=door_parts), *p.values)
    result_rows = [r for r in time_rows if r["g"] == _G_RESULT]
    by_result = {r["access_result"]: int(r["n"]) for r in result_rows}
    total = sum(by_result.values())
    granted = by_result.get("Granted", 0)
    first_event = min((r["first_event"] for r in result_rows), default=None)
    last_event = max((r["last_event"] for r in result_rows), default=None)
    by_hour = {str(h): 0 for h in range(24)}
    for row in time_rows:
        if row["g"] == _G_HOUR:
            by_hour[str(row["hr"])] = int(row["n"])
    return {
        "total_events": total,
        "granted": granted,
        "denied": by_result.get("Denied", 0),
        "timeout": by_result.get("Timeout", 0),
        "error": by_result.get("Error", 0),
        "success_rate": round(granted / total, 6) if total else None,
        "unique_people": unique_people,
        "unique_doors": len(door_rows),
        "first_event": first_event.isoformat() if first_event else None,
        "last_event": last_event.isoformat() if last_event else None,
        "by_hour": by_hour,
        "top_doors": [
            {"door_id": r["door_id"], "events": int(r["n"]), "denied": int(r["denied"])}
            for r in door_rows[:top]
        ],
        "filters": flt.model_dump(mode="json"),
    }
