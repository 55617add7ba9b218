"""`GET/PUT /admin/tuning` of the event processor: batch size and flush interval, applied live.

The processor reads `ProcessorService.tuning` at every poll, so changing the fields of that one
object takes effect on the next batch with no restart and no lost message. Values outside the
bounds are refused with a 422 naming the field; a partial body changes only what it names.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from prometheus_client import Gauge

from services.gateway.event_processor.deps import Processor
from services.gateway.event_processor.service import ProcessorService
from shared.admin import AdminOnly, Knob, PartialUpdate, TuningView, bounds_of

log = logging.getLogger(__name__)

KNOBS = {
    "batch_size": Knob(1, 100_000, "records per poll and insert"),
    "flush_interval_ms": Knob(1, 10_000, "longest wait for a batch to fill"),
}

SETTING = Gauge("event_processor_setting", "Live tuning value of the event processor", ["setting"])

router = APIRouter(prefix="/admin", tags=["admin"])


class ProcessorTuningUpdate(PartialUpdate):
    """Fields left out keep their current value."""

    batch_size: int | None = KNOBS["batch_size"].update_field()
    flush_interval_ms: int | None = KNOBS["flush_interval_ms"].update_field()


class ProcessorTuningView(TuningView):
    batch_size: int
    flush_interval_ms: int


def _view(processor: ProcessorService) -> ProcessorTuningView:
    tuning = processor.tuning
    SETTING.labels(setting="batch_size").set(tuning.batch_size)
    SETTING.labels(setting="flush_interval_ms").set(tuning.flush_interval_ms)
    return ProcessorTuningView(
        batch_size=tuning.batch_size,
        flush_interval_ms=tuning.flush_interval_ms,
        defaults={
            "batch_size": processor.settings.processor_batch_size,
            "flush_interval_ms": processor.settings.processor_flush_interval_ms,
        },
        bounds=bounds_of(KNOBS),
    )


@router.get("/tuning", response_model=ProcessorTuningView)
async def get_tuning(_: AdminOnly, processor: Processor) -> ProcessorTuningView:
    """The event processor's live batch size and flush interval, with their bounds."""
    return _view(processor)


@router.put("/tuning", response_model=ProcessorTuningView)
async def put_tuning(
    _: AdminOnly, processor: Processor, update: ProcessorTuningUpdate
) -> ProcessorTuningView:
    """Change the batch size and/or flush interval; effective from the next poll."""
    tuning = processor.tuning
    before: dict[str, Any] = {"batch_size": tuning.batch_size, "flush_interval_ms": tuning.flush_interval_ms}
    if update.batch_size is not None:
        tuning.batch_size = update.batch_size
    if update.flush_interval_ms is not None:
        tuning.flush_interval_ms = update.flush_interval_ms
    after = {"batch_size": tuning.batch_size, "flush_interval_ms": tuning.flush_interval_ms}
    log.info("event processor tuning changed", extra={"before": before, "after": after})
    return _view(processor)
