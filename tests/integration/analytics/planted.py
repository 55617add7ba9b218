"""A dataset with known patterns planted in an unremarkable background.

The background never produces an anomaly by construction: people work 09:00-17:00 UTC on
weekdays, are denied at most once a day, use valid badges, close doors within 10 s and always
badge in. The planted findings are therefore exactly the ones listed in `PLANTED`.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
DOORS = [f"door-{i}" for i in range(8)]
PEOPLE = [f"person-{i:02d}" for i in range(30)]
POWER_USER = "power-user"
BURST_PERSON = "person-03"
ODD_HOUR_PERSON = "person-05"
EXPIRED_PERSON = "person-07"
HELD_OPEN_DOOR = "door-2"
NO_BADGE_PERSON = "person-09"

PLANTED = {
    "denial_burst": {"person_id": BURST_PERSON, "event_ids": ["burst-0", "burst-1", "burst-2", "burst-3"]},
    "unusual_hour": {"person_id": ODD_HOUR_PERSON, "event_ids": ["odd-hour-0"]},
    "invalid_badge_granted": {"person_id": EXPIRED_PERSON, "event_ids": ["expired-grant-0"]},
    "door_held_open": {"door_id": HELD_OPEN_DOOR, "event_ids": ["held-open-0"]},
    "entry_without_badge": {"person_id": NO_BADGE_PERSON, "event_ids": ["no-badge-0"]},
}


def _event(event_id: str, ts: datetime, person: str, door: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "timestamp": ts.isoformat(),
        "person_id": person,
        "door_id": door,
        "badge_id": f"badge-{person}",
        "access_result": "Granted",
        "badge_status": "Valid",
        "door_held_open_time": 3.0,
        "facility_id": "hq" if door < "door-6" else "annex",
        **fields,
    }


def planted_events(seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    weekdays = [START + timedelta(days=d) for d in range(28) if (START + timedelta(days=d)).weekday() < 5]
    for index, person in enumerate([*PEOPLE, POWER_USER]):
        count = 500 if person == POWER_USER else 30 + index
        denied_days: set[datetime] = set()
        for n in range(count):
            day = rng.choice(weekdays)
            ts = day + timedelta(
                hours=rng.randrange(9, 17), minutes=rng.randrange(60), seconds=rng.randrange(60)
            )
            result = "Granted"
            if day not in denied_days and rng.random() < 0.05:
                denied_days.add(day)  # at most one denial a day: never a burst
                result = "Denied"
            events.append(
                _event(
                    f"bg-{person}-{n}",
                    ts,
                    person,
                    rng.choice(DOORS),
                    access_result=result,
                    door_held_open_time=round(rng.uniform(0, 10), 2),
                )
            )
    burst_start = weekdays[3] + timedelta(hours=10, minutes=30)
    for i in range(4):
        events.append(
            _event(
                f"burst-{i}",
                burst_start + timedelta(seconds=12 * i),
                BURST_PERSON,
                "door-3",
                access_result="Denied",
            )
        )
    events.append(
        _event("odd-hour-0", weekdays[5] + timedelta(hours=3, minutes=12), ODD_HOUR_PERSON, "door-1")
    )
    events.append(
        _event(
            "expired-grant-0",
            weekdays[6] + timedelta(hours=11),
            EXPIRED_PERSON,
            "door-5",
            badge_status="Expired",
        )
    )
    events.append(
        _event(
            "held-open-0",
            weekdays[7] + timedelta(hours=14),
            "person-08",
            HELD_OPEN_DOOR,
            door_held_open_time=120.0,
        )
    )
    events.append(
        _event(
            "no-badge-0",
            weekdays[8] + timedelta(hours=15),
            NO_BADGE_PERSON,
            "door-4",
            entry_without_badge=True,
            badge_id=None,
        )
    )
    return events
