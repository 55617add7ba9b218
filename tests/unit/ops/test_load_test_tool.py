"""tools/load_test.py without a server: what it generates, what it refuses, how it bounds a run."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from shared.events import AccessEvent, parse_event_bytes
from tools.load_test import (
    DEFAULT_TARGET,
    MAX_DURATION_S,
    EventGenerator,
    build_parser,
    check_target,
    plan_from_args,
)


def test_fleet_events_carry_every_reference_field_and_are_live() -> None:
    generator = EventGenerator(seed=3)
    before = datetime.now(UTC)
    events = [generator.event() for _ in range(500)]
    after = datetime.now(UTC)
    for raw in events:
        event = parse_event_bytes(orjson.dumps(raw))  # exactly what the processor does
        assert event.badge_id
        assert event.facility_id
        assert event.badge_status
        assert before - timedelta(seconds=1) <= event.timestamp <= after
        assert not event.extra
    assert len({e["event_id"] for e in events}) == 500


def test_original_shape_is_the_five_field_message_with_a_naive_timestamp() -> None:
    generator = EventGenerator(seed=3, shape="original")
    message = generator.event()
    assert set(message) == {"event_id", "timestamp", "person_id", "door_id", "access_result"}
    assert datetime.fromisoformat(message["timestamp"]).tzinfo is None
    event = AccessEvent.model_validate(message)
    assert event.timestamp.tzinfo is UTC  # a naive time is UTC
    assert event.badge_id is None


def test_traffic_looks_like_a_building() -> None:
    generator = EventGenerator(seed=5, people=200, doors=20)
    events = [generator.event() for _ in range(5000)]
    results = Counter(e["access_result"] for e in events)
    assert 0.85 <= results["Granted"] / 5000 <= 0.95
    assert results["Denied"] > results["Timeout"]
    doors = Counter(e["door_id"] for e in events)
    busiest, quietest = doors.most_common()[0][1], doors.most_common()[-1][1]
    assert busiest > 5 * quietest  # the main entrance is far busier than a side door
    # A person keeps one badge.
    badges: dict[str, set[str]] = {}
    for e in events:
        badges.setdefault(e["person_id"], set()).add(e["badge_id"])
    assert all(len(b) == 1 for b in badges.values())


def test_a_seed_makes_a_run_reproducible_and_runs_differ_without_one() -> None:
    first = EventGenerator(seed=9).event()
    again = EventGenerator(seed=9).event()
    assert (first["event_id"], first["person_id"], first["door_id"]) == (
        again["event_id"],
        again["person_id"],
        again["door_id"],
    )
    assert EventGenerator().event()["event_id"] != EventGenerator().event()["event_id"]


def test_bodies_are_an_object_for_one_event_and_an_array_for_a_batch() -> None:
    generator = EventGenerator(seed=1)
    assert isinstance(orjson.loads(generator.body(1)), dict)
    batch = orjson.loads(generator.body(7))
    assert isinstance(batch, list)
    assert len(batch) == 7


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:9000/", "http://[::1]:8080"])
def test_loopback_targets_need_no_flag(url: str) -> None:
    assert check_target(url, explicit=False) == url.rstrip("/")


def test_other_targets_only_when_named() -> None:
    with pytest.raises(ValueError, match="--target"):
        check_target("http://gateway.example:8080", explicit=False)
    assert check_target("http://gateway:8080", explicit=True) == "http://gateway:8080"
    for bad in ("ftp://127.0.0.1", "127.0.0.1:8080", "http://"):
        with pytest.raises(ValueError, match="http"):
            check_target(bad, explicit=True)


def test_a_run_is_bounded_in_time_and_count() -> None:
    parser = build_parser()
    plan = plan_from_args(parser.parse_args(["--rate", "250", "--duration", "3"]))
    assert plan.target == DEFAULT_TARGET
    assert plan.max_events == 750
    plan = plan_from_args(parser.parse_args(["--rate", "0.5", "--duration", "3"]))
    assert plan.max_events == math.ceil(1.5)
    plan = plan_from_args(parser.parse_args(["--rate", "1000", "--duration", "60", "--max-events", "10"]))
    assert plan.max_events == 10
    for bad in (
        ["--rate", "0"],
        ["--rate", "nan"],
        ["--duration", str(MAX_DURATION_S + 1)],
        ["--batch-size", "0"],
        ["--concurrency", "100000"],
        ["--max-events", "-1"],
        ["--shape", "csv"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(bad)
        assert exit_info.value.code == 2, bad
