"""Factories for access events and datasets, shared by every test and benchmark."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

_counter = itertools.count()


def event_dict(**overrides: Any) -> dict[str, Any]:
    """One valid wire-format event; override any field."""
    n = next(_counter)
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "timestamp": (datetime(2025, 1, 1, 9, tzinfo=UTC) + timedelta(seconds=n)).isoformat(),
        "person_id": f"p{n % 50}",
        "door_id": f"d{n % 10}",
        "badge_id": f"b{n % 50}",
        "access_result": "Granted",
        "badge_status": "Valid",
    }
    base.update(overrides)
    return base


def random_events(
    count: int, *, seed: int = 7, start: datetime | None = None, people: int = 200, doors: int = 40
) -> list[dict[str, Any]]:
    """A reproducible stream of plausible events (mostly granted, office hours weighted)."""
    rng = random.Random(seed)
    start = start or datetime(2025, 1, 6, tzinfo=UTC)
    out = []
    for i in range(count):
        day = rng.randrange(0, 28)
        hour = rng.choices(range(24), weights=[1] * 7 + [8] * 11 + [1] * 6)[0]
        ts = start + timedelta(days=day, hours=hour, seconds=rng.randrange(3600))
        out.append(
            {
                "event_id": f"ev-{seed}-{i}",
                "timestamp": ts.isoformat(),
                "person_id": f"p{rng.randrange(people)}",
                "door_id": f"d{rng.randrange(doors)}",
                "badge_id": f"b{rng.randrange(people)}",
                "access_result": rng.choices(
                    ["Granted", "Denied", "Timeout", "Error"], weights=[90, 8, 1, 1]
                )[0],
                "badge_status": rng.choices(
                    ["Valid", "Invalid", "Expired", "Suspended"], weights=[95, 2, 2, 1]
                )[0],
                "facility_id": f"f{rng.randrange(3)}",
            }
        )
    return out
