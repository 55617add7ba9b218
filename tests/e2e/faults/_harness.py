"""The fault suite's harness: sustained REST traffic with a ledger, and the figures every fault reports.

Every fault test runs traffic in a background thread, injects its fault, and then reports the
same figures: events posted, acknowledged (answered 202), stored, dead-lettered, duplicated and
lost, the 5xx answers before the fault (answered before it hit: a request in flight when it
hit belongs to the outage) and after recovery (sent after the first good answer once the
dependency is back), and how long recovery took. Each test prints them as one `FAULT {...}` JSON
line (run with `-s` to see them; the README's reliability section quotes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from tests.factories import event_dict


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the request was sent
    status: int  # 0: no answer (connection refused, timeout)
    event_ids: tuple[str, ...] = ()
    answered: float | None = None  # time.monotonic() when the answer came; None: same as `at`

    @property
    def done(self) -> float:
        return self.answered if self.answered is not None else self.at


@dataclass
class Ledger:
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self.lock:
            return list(self.answers)

    @property
    def posted(self) -> int:
        return sum(len(a.event_ids) for a in self.snapshot())

    @property
    def acknowledged(self) -> set[str]:
        return {i for a in self.snapshot() if a.status == 202 for i in a.event_ids}

    def first_success_after(self, t: float) -> float | None:
        return next((a.at for a in self.snapshot() if a.at >= t and 200 <= a.status < 300), None)

    def server_errors(self, start: float, end: float) -> int:
        """5xx answers to requests sent in [start, end)."""
        return sum(1 for a in self.snapshot() if start <= a.at < end and a.status >= 500)

    def server_errors_answered_before(self, t: float) -> int:
        """5xx answers that came before `t` (a request in flight when a fault hit is the fault's)."""
        return sum(1 for a in self.snapshot() if a.done < t and a.status >= 500)


class Traffic(threading.Thread):
    """Sends one request every `interval_s` until stopped.

    `request` returns (status, event ids); it answers status 0 itself when no answer came.
    """

    def __init__(
        self,
        request: Callable[[httpx.Client], tuple[int, tuple[str, ...]]],
        base_url: str,
        interval_s: float = 0.05,
    ) -> None:
        super().__init__(name="fault-traffic", daemon=True)
        self.request = request
        self.base_url = base_url
        self.interval_s = interval_s
        self.ledger = Ledger()
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._halt.is_set():
                sent = time.monotonic()
                status, ids = self.request(client)
                self.ledger.add(Answer(sent, status, ids, answered=time.monotonic()))
                self._halt.wait(self.interval_s)

    def stop(self) -> Ledger:
        self._halt.set()
        self.join(timeout=30)
        return self.ledger


def ingest_request(batch: int = 20) -> Callable[[httpx.Client], tuple[int, tuple[str, ...]]]:
    """POST /api/v1/events with `batch` new events per request."""

    def send(client: httpx.Client) -> tuple[int, tuple[str, ...]]:
        events = [event_dict() for _ in range(batch)]
        ids = tuple(e["event_id"] for e in events)
        try:
            response = client.post("/api/v1/events", json=events)
        except httpx.HTTPError:
            return 0, ids
        return response.status_code, ids

    return send


async def _stored(dsn: str, ids: list[str]) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM access_events WHERE event_id = ANY($1)",
            ids,
        )
        assert row is not None
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


def wait_stored(dsn: str, ids: set[str], timeout_s: float = 60.0) -> tuple[int, int]:
    """(rows, distinct event ids) stored among `ids`, once all are stored or the time is up."""
    wanted = sorted(ids)
    deadline = time.monotonic() + timeout_s
    rows, distinct = asyncio.run(_stored(dsn, wanted))
    while distinct < len(wanted) and time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            rows, distinct = asyncio.run(_stored(dsn, wanted))
    return rows, distinct


async def _dead_letters(bootstrap: str, topic: str, idle_s: float) -> int:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    count = 0
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            got = sum(len(records) for records in batch.values())
            if not got:
                return count
            count += got
    finally:
        await consumer.stop()


def dead_letters(bootstrap: str, topic: str, idle_s: float = 2.0) -> int:
    """Messages in the dead-letter topic (read from the start until it stays quiet `idle_s`)."""
    return asyncio.run(_dead_letters(bootstrap, topic, idle_s))


def breaker_states(url: str, path: str = "/breaker") -> dict[str, str]:
    """Breaker states by name: the gateway's board (`/breaker`) or a service's own (`/breakers`)."""
    snapshot = httpx.get(url + path, timeout=5).json()
    return {
        name: value["state"]
        for name, value in snapshot.items()
        if isinstance(value, dict) and "state" in value
    }


def wait_breakers_closed(
    url: str, names: list[str], timeout_s: float = 30.0, path: str = "/breaker"
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states = breaker_states(url, path)
    while any(states.get(n) != "closed" for n in names) and time.monotonic() < deadline:
        time.sleep(0.5)
        states = breaker_states(url, path)
    return {n: states.get(n, "missing") for n in names}


def figures(
    name: str,
    ledger: Ledger,
    *,
    fault_at: float,
    back_at: float,
    stored_rows: int,
    stored_distinct: int,
    dead_lettered: int,
    breakers: dict[str, str],
    **extra: Any,
) -> dict[str, Any]:
    """The figures of one fault run; printed as `FAULT {...}` and returned for the asserts."""
    answers = ledger.snapshot()
    recovered_at = ledger.first_success_after(back_at)
    acknowledged = len(ledger.acknowledged)
    result: dict[str, Any] = {
        "fault": name,
        "requests": len(answers),
        "posted": ledger.posted,
        "acknowledged": acknowledged,
        "stored": stored_distinct,
        "dead_lettered": dead_lettered,
        "duplicated": stored_rows - stored_distinct,
        "lost": acknowledged - stored_distinct - dead_lettered,
        "refused_during_outage": sum(
            1 for a in answers if fault_at <= a.at < (recovered_at or back_at) and not 200 <= a.status < 300
        ),
        "5xx_before_fault": ledger.server_errors_answered_before(fault_at),
        "5xx_after_recovery": ledger.server_errors(recovered_at, float("inf")) if recovered_at else None,
        "outage_seconds": round(back_at - fault_at, 2),
        "recovery_seconds": round(recovered_at - back_at, 2) if recovered_at else None,
        "breakers_after": breakers,
        **extra,
    }
    print("FAULT " + json.dumps(result), flush=True)
    return result
