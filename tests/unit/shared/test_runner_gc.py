"""A service process, once its app is built, keeps its start-up objects out of the collector's
walks and collects its youngest generation less often; garbage made earlier is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from services.gateway.event_processor.app import GC_YOUNG_THRESHOLD
from shared import runner
from shared.runner import YOUNG_COLLECTION_THRESHOLD, freeze_startup_objects
from shared.settings import FleetSettings


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()  # this test process builds many apps: their cycles must stay collectable
        gc.set_threshold(*threshold)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_after_collecting_garbage_and_young_ones_collected_less_often() -> None:
    garbage = _Cycle()
    gone = weakref.ref(garbage)
    del garbage  # a cycle: only the collector frees it
    kept = FastAPI()
    freeze_startup_objects()
    assert gone() is None, "garbage made before the freeze must be collected, not frozen"
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects()), "the app is frozen out of the walks"
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
    later = _Cycle()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None, "objects made after the freeze are collected as ever"


@pytest.mark.usefixtures("restored_collector")
def test_a_service_with_larger_units_of_work_sets_its_own_young_threshold() -> None:
    middle, oldest = gc.get_threshold()[1:]
    freeze_startup_objects(GC_YOUNG_THRESHOLD)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, oldest)
    assert GC_YOUNG_THRESHOLD > YOUNG_COLLECTION_THRESHOLD


def test_every_service_process_freezes_once_its_app_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    # Logging and tracing of a service process are not this test's (nor this process's) business.
    monkeypatch.setattr("shared.json_logging.configure_logging", lambda *a, **k: None)
    monkeypatch.setattr("shared.tracing.init_tracing", lambda *a, **k: False)
    monkeypatch.setattr(runner, "freeze_startup_objects", lambda: calls.append("frozen"))
    app = FastAPI()
    assert runner.prepare_app("gateway", lambda: app, FleetSettings(TRACING_ENABLED=False)) is app
    assert calls == ["frozen"]
