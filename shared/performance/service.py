"""Self-monitoring every service runs: snapshots, threshold evaluation and alert delivery.

`create_service_app` enters `monitoring_lifespan` for every service, so each process judges the
thresholds of `config/monitoring.yaml` on its own operations (HTTP routes, queries, batches,
uploads) and resources; a threshold whose operation a service never performs simply has no
samples there and stays quiet.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from shared.performance.alerts import AlertDispatcher
from shared.performance.config import load_monitoring_config
from shared.performance.monitor import get_performance_monitor
from shared.performance.realtime import RealTimePerformanceTracker, set_realtime_tracker


@contextlib.asynccontextmanager
async def monitoring_lifespan(
    app: FastAPI, config_path: Path | str | None, service: str
) -> AsyncIterator[None]:
    config = load_monitoring_config(config_path)
    monitor = get_performance_monitor()
    monitor.set_history_size(config.snapshots.history_size)
    tracker = RealTimePerformanceTracker(
        config, dispatcher=AlertDispatcher(config.alerts), monitor=monitor, service=service
    )
    app.state.performance_tracker = tracker
    set_realtime_tracker(tracker)
    monitor.sample_resources()
    monitor.start(config.snapshots.interval_seconds)
    tracker.start()
    try:
        yield
    finally:
        await tracker.stop()
        await monitor.stop()
        tracker.close()
        set_realtime_tracker(None)
