"""Analytics HTTP routes: thin; the computations live in their own modules."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Request

from services.analytics.filters import Filters
from services.analytics.summary import access_summary

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Pool = Annotated[asyncpg.Pool, Depends(get_pool)]


@router.get("/summary")
async def summary(pool: Pool, flt: Filters) -> dict[str, Any]:
    """Totals, success rate, events per hour (UTC) and the busiest doors."""
    return await access_summary(pool, flt)
