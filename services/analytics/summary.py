"""The access summary, aggregated in SQL (one scan, no rows leave the database)."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.analytics.filters import EventFilter
from shared.performance.operation import named_operation

_TOTALS_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE access_result = 'Granted') AS granted,
       count(*) FILTER (WHERE access_result = 'Denied') AS denied,
       count(*) FILTER (WHERE access_result = 'Timeout') AS timeout,
       count(*) FILTER (WHERE access_result = 'Error') AS error,
       count(DISTINCT person_id) AS unique_people,
       count(DISTINCT door_id) AS unique_doors,
       min(time) AS first_event, max(time) AS last_event
FROM access_events{where}
"""
_BY_HOUR_SQL = """
SELECT extract(hour FROM time AT TIME ZONE 'UTC')::int AS hour, count(*) AS n
FROM access_events{where} GROUP BY 1 ORDER BY 1
"""
_TOP_DOORS_SQL = """
SELECT door_id, count(*) AS n, count(*) FILTER (WHERE access_result = 'Denied') AS denied
FROM access_events{where} GROUP BY door_id ORDER BY n DESC, door_id LIMIT $__limit
"""


@named_operation("db.analytics_summary")
async def access_summary(pool: asyncpg.Pool, flt: EventFilter, top: int = 10) -> dict[str, Any]:
    where, params = flt.where()
    async with pool.acquire() as conn:
        totals = await conn.fetchrow(_TOTALS_SQL.format(where=where), *params)
        by_hour_rows = await conn.fetch(_BY_HOUR_SQL.format(where=where), *params)
        top_sql = _TOP_DOORS_SQL.format(where=where).replace("$__limit", f"${len(params) + 1}")
        top_rows = await conn.fetch(top_sql, *params, top)
    assert totals is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
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
        "unique_people": int(totals["unique_people"]),
        "unique_doors": int(totals["unique_doors"]),
        "first_event": totals["first_event"].isoformat() if totals["first_event"] else None,
        "last_event": totals["last_event"].isoformat() if totals["last_event"] else None,
        "by_hour": by_hour,
        "top_doors": [
            {"door_id": r["door_id"], "events": int(r["n"]), "denied": int(r["denied"])} for r in top_rows
        ],
        "filters": flt.model_dump(mode="json"),
    }
