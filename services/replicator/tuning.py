"""`GET/PUT /admin/tuning` of the replicator: batch size and cycle interval, applied live.

The optimizer lengthens the interval while the host is saturated by foreground writes
(replication is background work that can wait, within a freshness budget) and sets it back
when they stop; a change wakes a waiting replication loop at once, so a shorter interval is
never held up by the longer sleep it replaces.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from prometheus_client import Gauge
from pydantic import BaseModel, Field

from services.replicator.service import ReplicatorService, replicator_of
from shared.admin import AdminOnly, PartialUpdate

log = logging.getLogger(__name__)

BATCH_SIZE_BOUNDS = (100, 1_000_000)
INTERVAL_SECONDS_BOUNDS = (0.05, 3_600.0)

SETTING = Gauge("replication_setting", "Live tuning value of the replicator", ["setting"])

router = APIRouter(prefix="/admin", tags=["admin"])


class ReplicatorTuningUpdate(PartialUpdate):
    """Fields left out keep their current value."""

    batch_size: int | None = Field(
        None, ge=BATCH_SIZE_BOUNDS[0], le=BATCH_SIZE_BOUNDS[1], description="rows per replication batch"
    )
    interval_seconds: float | None = Field(
        None,
        ge=INTERVAL_SECONDS_BOUNDS[0],
        le=INTERVAL_SECONDS_BOUNDS[1],
        description="pause between catch-ups",
    )


class ReplicatorTuningView(BaseModel):
    batch_size: int
    interval_seconds: float
    defaults: dict[str, float]
    bounds: dict[str, tuple[float, float]]


def _view(service: ReplicatorService) -> ReplicatorTuningView:
    SETTING.labels(setting="batch_size").set(service.batch_size)
    SETTING.labels(setting="interval_seconds").set(service.interval_s)
    return ReplicatorTuningView(
        batch_size=service.batch_size,
        interval_seconds=service.interval_s,
        defaults={
            "batch_size": service.settings.replication_batch_size,
            "interval_seconds": service.settings.replication_interval,
        },
        bounds={"batch_size": BATCH_SIZE_BOUNDS, "interval_seconds": INTERVAL_SECONDS_BOUNDS},
    )


@router.get("/tuning", response_model=ReplicatorTuningView)
async def get_tuning(request: Request, _: AdminOnly) -> ReplicatorTuningView:
    """The replicator's live batch size and interval, their configured defaults and bounds."""
    return _view(replicator_of(request))


@router.put("/tuning", response_model=ReplicatorTuningView)
async def put_tuning(request: Request, update: ReplicatorTuningUpdate, _: AdminOnly) -> ReplicatorTuningView:
    """Change the batch size and/or interval; a waiting loop wakes and uses them at once."""
    service = replicator_of(request)
    before = {"batch_size": service.batch_size, "interval_seconds": service.interval_s}
    service.retune(batch_size=update.batch_size, interval_s=update.interval_seconds)
    after = {"batch_size": service.batch_size, "interval_seconds": service.interval_s}
    log.info("replicator tuning changed", extra={"before": before, "after": after})
    return _view(service)
