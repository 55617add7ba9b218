"""Does the optimizer beat static settings? The same shifting load on two fleets, in one run.

Two fleets are started the same way (analytics, a gateway with its in-process event
processor, a replicator to a replica database, an optimizer; each with its own databases and
topic): in one the optimizer only
recommends (`OPTIMIZER_ENABLED=false`, the static defaults stay), in the other it applies its
decisions (`OPTIMIZER_ENABLED=true`, a short decision interval and cooldown). Both fleets are
up together and warmed up the same way; then, phase by phase, one fleet gets the load while
the other waits (the fleet going first flips between rounds), so drift on the machine (other
work on it) reaches both alike within seconds. The load shifts what is busy, in three phases:

1. uploads: a fixed set of CSV files, two at a time, `POST /api/v1/uploads` through the
   gateway (fixed work, so both fleets then query the same data);
2. queries: concurrent clients ask summary, patterns and anomalies through the gateway over
   a mix of facilities and weekly windows, a few views far more often than the rest (Zipf);
3. ingest: concurrent `POST /api/v1/events` batches through the gateway for a fixed time,
   then the wait until the processor has stored every accepted event.

Objective, stated before the numbers: per phase, work completed per second —
- uploads: CSV rows processed per second;
- queries: answers (200) per second, with p95 and the answers within `QUERY_TARGET_MS` next
  to it;
- ingest: events stored per second, from the first POST until the last accepted event is in
  the database (a processor that falls behind is charged for its drain), with the event →
  stored p95 next to it.
The constraint: the replica stays fresh. During every phase the replicator's
`replication_backlog_seconds` is sampled (its maximum must stay within the optimizer's
`OPTIMIZER_REPLICATION_BACKLOG_BUDGET`, 60 s, well under the 300 s alert), and after every
phase the fleet must have replicated every row, and rolled every row up, before the next phase
starts anywhere: the time each takes is reported per phase (`catch_up_s`, `rollup_catch_up_s`),
outside the phase's own seconds; then both of the fleet's tables are vacuumed, so neither
fleet's leftover background work (replication, rollups, autovacuum) slows the other's measured
phase. Failed requests are counted per kind (`error_kinds`: a timeout, or the status and error
code of the answer).
The score is the geometric mean over the phases of optimized ÷ static. Every decision the
optimizer took (and, for the static fleet, what it only recommended) is in the output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import asyncpg
import httpx
import orjson

from bench._gateway_bench import count_rows, fresh_database, servers, unique_name
from services.analytics import rollups
from services.optimizer.scrape import Scrape, Window
from shared.kafka import ensure_topics
from tools.dev.fleet import ServiceProcess

TOKEN = "bench-optimizer-token"
QUERY_TARGET_MS = 500.0
HEADER = ["Timestamp", "Person ID", "Token ID", "Device name", "Access result", "facility_id"]
FACILITIES = ("f0", "f1", "f2")
# Weekly windows of the uploaded month, and the whole month.
WINDOWS = [(f"2025-02-{d:02d}T00:00:00Z", f"2025-02-{d + 7:02d}T00:00:00Z") for d in (1, 8, 15)] + [
    ("2025-02-22T00:00:00Z", "2025-03-01T00:00:00Z"),
    ("2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"),
]
ENDPOINTS = ("summary", "patterns", "anomalies")
PHASES = ("uploads", "queries", "ingest")


@dataclass(frozen=True)
class Profile:
    files: int  # uploaded in the uploads phase: a fixed amount of work, timed
    rows_per_file: int
    query_s: float
    ingest_s: float
    rounds: int  # each round starts both fleets afresh; the order alternates between rounds
    upload_clients: int = 2
    query_clients: int = 16
    ingest_clients: int = 8
    events_per_post: int = 500
    interval_s: float = 1.0
    cooldown_s: float = 2.0


QUICK = Profile(files=8, rows_per_file=100_000, query_s=8, ingest_s=10, rounds=1)
FULL = Profile(
    files=10, rows_per_file=150_000, query_s=25, ingest_s=20, rounds=2, interval_s=1.0, cooldown_s=4.0
)
BACKLOG_BUDGET_S = 60.0


# -- load ------------------------------------------------------------------------------------


def write_csv(
    path: Path, rows: int, seed: int, *, facility: str | None = None, month: str = "2025-02"
) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for _ in range(rows):
            second = rng.randrange(28 * 86400)
            day, rest = divmod(second, 86400)
            stamp = f"{month}-{day + 1:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}Z"
            result = "Granted" if rng.random() < 0.9 else "Denied"
            writer.writerow(
                [
                    stamp,
                    f"p{rng.randrange(3000)}",
                    f"b{rng.randrange(3000)}",
                    f"door {rng.randrange(150)}",
                    result,
                    facility or FACILITIES[rng.randrange(len(FACILITIES))],
                ]
            )


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class PhaseResult:
    name: str
    started: float = 0.0  # epoch seconds, to place the optimizer's decisions
    seconds: float = 0.0
    work: float = 0.0  # the phase's unit of work (rows, good answers, events stored)
    unit: str = ""
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    # What each failure was ("timeout", "HTTP 503 database_unavailable", ...) and how often: a
    # count alone cannot tell a slow fleet from a broken one.
    error_kinds: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def failed(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        p50, p95 = percentile(self.latencies_s, 0.5), percentile(self.latencies_s, 0.95)
        return {
            "seconds": round(self.seconds, 2),
            "work": round(self.work, 1),
            "unit": self.unit,
            "per_second": round(self.rate, 1),
            "requests": len(self.latencies_s),
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds.most_common()),
            "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
            **self.extra,
        }

    @property
    def rate(self) -> float:
        return self.work / self.seconds if self.seconds else 0.0


def answer_kind(answer: httpx.Response) -> str:
    """A failed answer as "HTTP <status> <error code>", the code read from the fleet's envelope."""
    try:
        code = answer.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "no envelope"
    return f"HTTP {answer.status_code} {code}"


def failure_kind(exc: httpx.HTTPError) -> str:
    """A request that got no answer: "timeout" past the client's limit, else the error's type."""
    return "timeout" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__


async def upload_phase(gateway: str, files: list[Path], p: Profile) -> PhaseResult:
    """Every file once, `upload_clients` at a time: a fixed amount of work, timed."""
    result = PhaseResult("uploads", started=time.time(), unit="csv rows processed")
    queue = list(files)

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            path = queue.pop(0)
            t0 = time.perf_counter()
            with path.open("rb") as fh:
                answer = await http.post("/api/v1/uploads", files={"file": (path.name, fh, "text/csv")})
            if answer.status_code == 201:
                result.latencies_s.append(time.perf_counter() - t0)
                body = answer.json()
                result.work += body["rows_inserted"] + body["rows_rejected"]
            else:
                result.failed(answer_kind(answer))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(p.upload_clients)))
    result.seconds = time.perf_counter() - started
    return result


def query_urls(seed: int) -> Iterator[str]:
    """Dashboard-like: a few views are asked for far more often than the rest (Zipf, s = 1)."""
    keys = [
        (endpoint, window, facility)
        for endpoint in ENDPOINTS
        for window in WINDOWS
        for facility in (None, *FACILITIES)
    ]
    random.Random(0).shuffle(keys)  # the same popularity order for every client and fleet
    weights = [1 / (rank + 1) for rank in range(len(keys))]
    rng = random.Random(seed)
    while True:
        endpoint, (start, end), facility = rng.choices(keys, weights)[0]
        query = f"start={start}&end={end}" + (f"&facility_id={facility}" if facility else "")
        yield f"/api/v1/analytics/{endpoint}?{query}"


async def query_phase(gateway: str, p: Profile) -> PhaseResult:
    result = PhaseResult("queries", started=time.time(), unit="answers (200)")
    stop_at = time.perf_counter() + p.query_s
    limits = httpx.Limits(max_connections=p.query_clients, max_keepalive_connections=p.query_clients)
    within = 0

    async def client(http: httpx.AsyncClient, seed: int) -> None:
        nonlocal within
        urls = query_urls(seed)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                answer = await http.get(next(urls))
            except httpx.HTTPError as exc:
                result.failed(failure_kind(exc))
                continue
            elapsed = time.perf_counter() - t0
            result.latencies_s.append(elapsed)
            if answer.status_code != 200:
                result.failed(answer_kind(answer))
                continue
            result.work += 1
            if elapsed * 1000 <= QUERY_TARGET_MS:
                within += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(http, seed) for seed in range(p.query_clients)))
    result.seconds = time.perf_counter() - started
    result.extra[f"within_{QUERY_TARGET_MS:.0f}ms_per_second"] = round(within / result.seconds, 1)
    return result


def events_body(rng: random.Random, count: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    return orjson.dumps(
        [
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "timestamp": now,
                "person_id": f"p{rng.randrange(3000)}",
                "door_id": f"door {rng.randrange(150)}",
                "badge_id": f"b{rng.randrange(3000)}",
                "access_result": "Granted" if rng.random() < 0.9 else "Denied",
                "facility_id": FACILITIES[rng.randrange(len(FACILITIES))],
            }
            for _ in range(count)
        ]
    )


async def ingest_phase(gateway: str, dsn: str, p: Profile, seed: int = 1_000) -> PhaseResult:
    result = PhaseResult("ingest", started=time.time(), unit="events stored")
    before_rows = await count_rows(dsn)
    before_metrics = await scrape(gateway)
    stop_at = time.perf_counter() + p.ingest_s
    accepted = 0
    limits = httpx.Limits(max_connections=p.ingest_clients, max_keepalive_connections=p.ingest_clients)
    headers = {"Content-Type": "application/json"}

    async def client(http: httpx.AsyncClient, seed: int) -> None:
        nonlocal accepted
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            body = events_body(rng, p.events_per_post)
            t0 = time.perf_counter()
            try:
                answer = await http.post("/api/v1/events", content=body, headers=headers)
            except httpx.HTTPError as exc:
                result.failed(failure_kind(exc))
                continue
            result.latencies_s.append(time.perf_counter() - t0)
            if answer.status_code == 202:
                accepted += int(answer.json()["accepted"])
            else:
                result.failed(answer_kind(answer))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(http, seed + i) for i in range(p.ingest_clients)))
    posted_s = time.perf_counter() - started
    stored = 0
    drain_deadline = time.perf_counter() + max(30.0, p.ingest_s)
    while time.perf_counter() < drain_deadline:
        stored = await count_rows(dsn) - before_rows
        if stored >= accepted:
            break
        await asyncio.sleep(0.05)
    result.seconds = time.perf_counter() - started
    result.work = stored
    window = Window(before_metrics, await scrape(gateway))
    event_p95 = window.quantile("event_processor_latency_seconds", 0.95)
    result.extra.update(
        {
            "events_accepted": accepted,
            "accepted_per_second": round(accepted / posted_s, 1),
            "drain_s": round(result.seconds - posted_s, 2),
            "event_to_stored_p95_ms": round(event_p95 * 1000, 1) if event_p95 is not None else None,
            "batches": window.increase("event_processor_batch_records_count"),
        }
    )
    return result


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url + "/metrics")
        response.raise_for_status()
        return Scrape.parse(response.text)


# -- fleets ----------------------------------------------------------------------------------


@dataclass
class Fleet:
    label: str
    dsn: str
    replica_dsn: str
    topic: str
    analytics: ServiceProcess
    gateway: ServiceProcess
    replicator: ServiceProcess
    optimizer: ServiceProcess

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.analytics, self.gateway, self.replicator, self.optimizer]


def build_fleet(
    label: str, enabled: bool, dsn: str, replica_dsn: str, bootstrap: str, logs: Path, p: Profile
) -> Fleet:
    topic = unique_name("bench_optimizer")
    asyncio.run(ensure_topics(bootstrap, {topic: 4, topic + ".dlq": 1}))
    analytics = ServiceProcess(
        "services.analytics",
        {
            "DATABASE_URL": dsn,
            "CACHE_TYPE": "memory",
            "LOG_LEVEL": "WARNING",
            "ADMIN_TOKEN": TOKEN,
        },
        logs,
    )
    gateway = ServiceProcess(
        "services.gateway",
        {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ACCESS_EVENTS_TOPIC": topic,
            "ACCESS_EVENTS_DLQ_TOPIC": topic + ".dlq",
            "ACCESS_EVENTS_PARTITIONS": "4",
            "EVENT_PROCESSOR_GROUP_ID": topic + "-processor",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "ANALYTICS_URL": analytics.url,
            "ADMIN_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
        },
        logs,
    )
    replicator = ServiceProcess(
        "services.replicator",
        {"DATABASE_URL": dsn, "TIMESCALE_URL": replica_dsn, "ADMIN_TOKEN": TOKEN, "LOG_LEVEL": "WARNING"},
        logs,
    )
    optimizer = ServiceProcess(
        "services.optimizer",
        {
            "OPTIMIZER_ENABLED": "true" if enabled else "false",
            "ADMIN_TOKEN": TOKEN,
            "ANALYTICS_URL": analytics.url,
            "GATEWAY_URL": gateway.url,
            "REPLICATOR_URL": replicator.url,
            "OPTIMIZER_REPLICATION_BACKLOG_BUDGET": str(BACKLOG_BUDGET_S),
            "OPTIMIZER_INTERVAL": str(p.interval_s),
            "OPTIMIZER_COOLDOWN": str(p.cooldown_s),
            "OPTIMIZER_CONFIRMATIONS": "2",
            "OPTIMIZER_LATENCY_TARGET_MS": str(QUERY_TARGET_MS),
            "LOG_LEVEL": "INFO",
        },
        logs,
    )
    return Fleet(label, dsn, replica_dsn, topic, analytics, gateway, replicator, optimizer)


def start_all(processes: list[ServiceProcess]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(processes)) as pool:
        for future in [pool.submit(proc.start, True, 120.0) for proc in processes]:
            future.result()


async def warm_up(gateway: str, path: Path) -> None:
    """Same for both fleets: spawn the worker processes, open pools, outside the measured data."""
    async with httpx.AsyncClient(base_url=gateway, timeout=120) as http:
        with path.open("rb") as fh:
            answer = await http.post("/api/v1/uploads", files={"file": (path.name, fh, "text/csv")})
        if answer.status_code != 201:
            raise RuntimeError(f"warm-up upload answered {answer.status_code}: {answer.text[:300]}")
        for endpoint in ENDPOINTS:
            (await http.get(f"/api/v1/analytics/{endpoint}?facility_id=warmup")).raise_for_status()
        (await http.post("/api/v1/events", content=events_body(random.Random(7), 10))).raise_for_status()


async def sample_backlog(replicator: str, peak: list[float], stop: asyncio.Event) -> None:
    """The replicator's own `replication_backlog_seconds`, twice a second, keeping the maximum."""
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await http.get(replicator + "/metrics")
                value = Scrape.parse(response.text).value("replication_backlog_seconds")
                if value is not None:
                    peak[0] = max(peak[0], value)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def wait_replicated(fleet: Fleet, timeout_s: float = 300.0) -> float:
    """Seconds until the replica holds every row of the primary."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if await count_rows(fleet.replica_dsn, "access_events_replica") >= await count_rows(fleet.dsn):
            return time.perf_counter() - started
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{fleet.label}: the replica did not catch up within {timeout_s:.0f}s")


async def wait_rolled_up(fleet: Fleet, timeout_s: float = 300.0) -> float:
    """Seconds until analytics has rolled up every stored row (`rollup_backlog_seconds` is 0).
    Uploads hold the rollups back while they write; until they catch up, cold answers read the
    rows not rolled up yet raw, so a query phase right after the uploads would measure that."""
    started = time.perf_counter()
    conn = await asyncpg.connect(fleet.dsn)
    try:
        while time.perf_counter() - started < timeout_s:
            if await rollups.backlog_seconds(conn) == 0.0:
                return time.perf_counter() - started
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    raise RuntimeError(f"{fleet.label}: the rollups did not catch up within {timeout_s:.0f}s")


async def settle(fleet: Fleet) -> None:
    """VACUUM ANALYZE both of the fleet's tables after its phase, outside the measured time.

    Otherwise autovacuum starts on a table that just took 1,500,000 rows while the *other*
    fleet runs its phase (measured: whichever fleet uploaded second lost up to 28 %, which
    swamped the difference between the fleets)."""
    for dsn, table in ((fleet.dsn, "access_events"), (fleet.replica_dsn, "access_events_replica")):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"VACUUM ANALYZE {table}")
        finally:
            await conn.close()


async def run_phase(name: str, fleet: Fleet, files: list[Path], p: Profile) -> PhaseResult:
    peak, stop = [0.0], asyncio.Event()
    sampler = asyncio.create_task(sample_backlog(fleet.replicator.url, peak, stop))
    try:
        if name == "uploads":
            result = await upload_phase(fleet.gateway.url, files, p)
        elif name == "queries":
            result = await query_phase(fleet.gateway.url, p)
        else:
            result = await ingest_phase(fleet.gateway.url, fleet.dsn, p)
        catch_up_s = await wait_replicated(fleet)
        rollup_catch_up_s = await wait_rolled_up(fleet)
    finally:
        stop.set()
        await sampler
    await settle(fleet)
    result.extra["replication_backlog_max_s"] = round(peak[0], 2)
    result.extra["catch_up_s"] = round(catch_up_s, 2)
    result.extra["rollup_catch_up_s"] = round(rollup_catch_up_s, 2)
    return result


def decisions_of(fleet: Fleet, phases: list[PhaseResult]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    status = httpx.get(fleet.optimizer.url + "/api/v1/optimizer/status", timeout=10).json()

    def phase_of(at: float) -> str:
        name = "warm-up"
        for phase in phases:
            if phase.started <= at <= phase.started + phase.seconds:
                return phase.name
            if at > phase.started:
                name = f"idle after {phase.name}"
        return name

    decisions = [
        {
            "phase": phase_of(d["at"]),
            "t_s": round(d["at"] - phases[0].started, 1),
            "knob": f"{d['service']}.{d['setting']}",
            "old": d["old"],
            "new": d["new"],
            "rule": d["rule"],
            "applied": d["applied"],
            "reason": d["reason"],
        }
        for d in reversed(status["decisions"])
    ]
    final = {
        f"{service}.{name}": knob["value"]
        for service, entry in status["services"].items()
        for name, knob in entry["settings"].items()
    }
    return decisions, final


def run_round(
    fleets: list[Fleet], files: list[Path], warm_file: Path, p: Profile, flip: bool
) -> dict[str, Any]:
    """Both fleets run; phase by phase each gets the load while the other waits. The order is
    the same for every phase of a round (so each fleet has the same pause between its phases:
    a table queried right after its bulk insert is slower, measured) and flips between rounds."""

    async def load() -> dict[str, list[PhaseResult]]:
        for fleet in fleets:
            await warm_up(fleet.gateway.url, warm_file)
            await wait_replicated(fleet)
            await settle(fleet)
        out: dict[str, list[PhaseResult]] = {fleet.label: [] for fleet in fleets}
        order = list(reversed(fleets)) if flip else fleets
        for name in PHASES:
            for fleet in order:
                out[fleet.label].append(await run_phase(name, fleet, files, p))
        return out

    phases = asyncio.run(load())
    result: dict[str, Any] = {}
    for fleet in fleets:
        decisions, final = decisions_of(fleet, phases[fleet.label])
        result[fleet.label] = {"phases": phases[fleet.label], "decisions": decisions, "final_settings": final}
    return result


def run(quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    rounds: list[dict[str, dict[str, Any]]] = []
    with servers() as (pg, bootstrap), TemporaryDirectory(prefix="bench-optimizer-") as tmp:
        files = []
        for i in range(p.files):
            path = Path(tmp) / f"upload-{i:03d}.csv"
            write_csv(path, p.rows_per_file, seed=i)
            files.append(path)
        warm_file = Path(tmp) / "warm-up.csv"
        write_csv(warm_file, 1_000, seed=10_000, facility="warmup", month="2025-01")
        logs = Path(tmp)
        for n in range(p.rounds):
            with (
                fresh_database(pg) as static_dsn,
                fresh_database(pg) as tuned_dsn,
                fresh_database(pg, "replica") as static_replica,
                fresh_database(pg, "replica") as tuned_replica,
            ):
                fleets = [
                    build_fleet("static", False, static_dsn, static_replica, bootstrap, logs, p),
                    build_fleet("optimized", True, tuned_dsn, tuned_replica, bootstrap, logs, p),
                ]
                try:
                    start_all([proc for fleet in fleets for proc in fleet.processes])
                    rounds.append(run_round(fleets, files, warm_file, p, flip=n % 2 == 1))
                finally:
                    for fleet in fleets:
                        for proc in reversed(fleet.processes):
                            proc.stop()
    return report(rounds, p, quick)


def _combine(phases: list[PhaseResult]) -> PhaseResult:
    out = PhaseResult(phases[0].name, unit=phases[0].unit)
    for phase in phases:
        out.seconds += phase.seconds
        out.work += phase.work
        out.errors += phase.errors
        out.error_kinds.update(phase.error_kinds)
        out.latencies_s.extend(phase.latencies_s)
    if len(phases) == 1:
        out.extra = dict(phases[0].extra)
    else:
        out.extra = {
            "per_round": [round(phase.rate, 1) for phase in phases],
            "replication_backlog_max_s": max(p.extra["replication_backlog_max_s"] for p in phases),
            "catch_up_s_per_round": [p.extra["catch_up_s"] for p in phases],
            "rollup_catch_up_s_per_round": [p.extra["rollup_catch_up_s"] for p in phases],
        }
        if phases[0].name == "ingest":
            out.extra["event_to_stored_p95_ms_per_round"] = [
                p.extra["event_to_stored_p95_ms"] for p in phases
            ]
    return out


def _distinct(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A recommendation repeated every cooldown, listed once with how often and where."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in decisions:
        key = (d["knob"], d["old"], d["new"], d["rule"])
        if key in seen:
            seen[key]["times"] += 1
            if d["phase"] not in seen[key]["phases"]:
                seen[key]["phases"].append(d["phase"])
        else:
            seen[key] = {**d, "times": 1, "phases": [d["phase"]]}
            del seen[key]["phase"]
    return list(seen.values())


def report(rounds: list[dict[str, dict[str, Any]]], p: Profile, quick: bool) -> dict[str, Any]:
    combined: dict[str, dict[str, PhaseResult]] = {}
    for label in ("static", "optimized"):
        combined[label] = {
            name: _combine([r[label]["phases"][i] for r in rounds]) for i, name in enumerate(PHASES)
        }
    ratios: dict[str, float | None] = {}
    for name in PHASES:
        base, other = combined["static"][name].rate, combined["optimized"][name].rate
        ratios[name] = round(other / base, 3) if base else None
    valid = [r for r in ratios.values() if r]
    score = math.exp(sum(math.log(r) for r in valid) / len(valid)) if valid else None
    worst_backlog = max(phase.extra["replication_backlog_max_s"] for phase in combined["optimized"].values())
    return {
        "objective": (
            "per phase work/s (uploads: CSV rows/s; queries: answers (200)/s, p95 and answers "
            f"within {QUERY_TARGET_MS:.0f} ms beside it; ingest: events stored/s including the "
            "drain); score = geometric mean over phases of optimized/static; constraint: the "
            f"replication backlog stays within {BACKLOG_BUDGET_S:.0f} s, and every row is "
            "replicated after each phase (catch_up_s, outside the phase's seconds)"
        ),
        "profile": {
            "rounds": p.rounds,
            "upload_rows": p.files * p.rows_per_file,
            "query_s": p.query_s,
            "ingest_s": p.ingest_s,
            "optimizer_interval_s": p.interval_s,
            "optimizer_cooldown_s": p.cooldown_s,
        },
        "ratio_per_phase": ratios,
        "score": round(score, 3) if score else None,
        "constraint": {
            "replication_backlog_budget_s": BACKLOG_BUDGET_S,
            "optimized_backlog_max_s": worst_backlog,
            "met": worst_backlog <= BACKLOG_BUDGET_S,
        },
        "static": {name: phase.as_dict() for name, phase in combined["static"].items()},
        "optimized": {name: phase.as_dict() for name, phase in combined["optimized"].items()},
        "optimized_decisions": [r["optimized"]["decisions"] for r in rounds],
        "optimized_final_settings": [r["optimized"]["final_settings"] for r in rounds],
        "static_recommendations": [_distinct(r["static"]["decisions"]) for r in rounds],
        "quick": quick,
    }


__all__ = ["run"]
