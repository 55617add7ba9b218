"""Fixtures of the fault suite: servers each test owns, so it may kill and restart them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.dev.embedded import EmbeddedKafka


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    """A Tansu broker of this test alone, its log on disk (as `make run` starts it)."""
    broker = EmbeddedKafka(storage_dir=tmp_path / "broker", log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()
