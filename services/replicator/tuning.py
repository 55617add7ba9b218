"""`GET/PUT /admin/tuning` of the replicator: batch size and cycle interval, applied live.

The optimizer lengthens the interval while the host is saturated by foreground writes
(replication is background work that can wait, within a freshness budget) and sets it back
when they stop; a change wakes a waiting replication loop at once, so a shorter interval is
never held up by the longer sleep it replaces.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from prometheus_client import Gauge

from services.replicator.deps import Replicator
from services.replicator.service import ReplicatorService
from shared.admin import AdminOnly, Knob, PartialUpdate, TuningView, bounds_of

log = logging.getLogger(__name__)

KNOBS = {
    "batch_size": Knob(100, 1_000_000, "rows per replication batch"),
    "interval_seconds": Knob(0.05, 3_600.0, "period between the starts of catch-ups"),
}

SETTING = Gauge("replication_setting", "Live tuning value of the replicator", ["setting"])

router = APIRouter(prefix="/admin", tags=["admin"])


class ReplicatorTuningUpdate(PartialUpdate):
    """Fields left out keep their current value."""

    batch_size: int | None = KNOBS["batch_size"].update_field()
    interval_seconds: float | None = KNOBS["interval_seconds"].update_field()


class ReplicatorTuningView(TuningView):
    batch_size: int
    interval_seconds: float


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
        bounds=bounds_of(KNOBS),
    )


@router.get("/tuning", response_model=ReplicatorTuningView)
async def get_tuning(_: AdminOnly, service: Replicator) -> ReplicatorTuningView:
    """The replicator's live batch size and interval, their configured defaults and bounds."""
    return _view(service)


@router.put("/tuning", response_model=ReplicatorTuningView)
async def put_tuning(
    _: AdminOnly, service: Replicator, update: ReplicatorTuningUpdate
) -> ReplicatorTuningView:
    """Change the batch size and/or interval; a waiting loop wakes and uses them at once."""
    before = {"batch_size": service.batch_size, "interval_seconds": service.interval_s}
    service.retune(batch_size=update.batch_size, interval_s=update.interval_seconds)
    after = {"batch_size": service.batch_size, "interval_seconds": service.interval_s}
    log.info("replicator tuning changed", extra={"before": before, "after": after})
    return _view(service)
