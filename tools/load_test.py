"""Load generator: publish realistic access events at a target rate, then report what the fleet did.

    make load-test RATE=100 DURATION=30                 # Kafka, the original design's way
    python -m tools.load_test --rate 200 --duration 30 --prometheus http://localhost:9090
    python -m tools.load_test --via http --target http://gateway:8080 --rate 1000 --batch-size 50
    python -m tools.load_test --shape original --rate 50 --duration 10    # the original system's messages

By default (`--via kafka`) events are published straight to the access-events topic
(`--kafka`, `--topic`; defaults from KAFKA_BOOTSTRAP_SERVERS and ACCESS_EVENTS_TOPIC), one
message each, keyed by door; `--via http` posts them to `POST /api/v1/events` instead (one
object, or a JSON array with `--batch-size` > 1). They are built and checked with
:class:`shared.events.AccessEvent`, the wire format's single definition; `--shape original` sends
the original system's five-field message with a naive timestamp instead.

Progress is printed every second on stderr. After the run the tool waits for the processor to
store what was published (`--drain-timeout`) and reports, from the processor's `/metrics`
(`--metrics-url`, default the gateway, which runs the processor), from Prometheus
(`--prometheus`) and from the database (`--database-url`, a cross-check), how many events were
stored and their event → stored latency (mean, p50/p95/p99); `--report-dir` also writes
`load-test.json` and `load-test.html` (latency and throughput over time, inline SVG). Exit code
1 when the target is missed: fewer than `--min-per-minute` stored events per minute (default
2500) or an average latency of `--max-mean-latency` seconds or more (default 1).

The run is open-loop: request *n* is due at `start + n * batch_size / rate`, whatever the answers
before it, and at most `--concurrency` requests are in flight. Latency is measured from the time a
request was due, not from when a free slot let it go, so a slow gateway shows up in the
percentiles instead of silently lowering the rate (coordinated omission). Percentiles come from an
HDR histogram, so memory stays constant however long the run.

Bounds: the run stops at `--duration` seconds or after `--max-events` events, whichever comes
first; Ctrl-C stops it early and still prints the summary. The only target is the one given with
`--target` (default: the loopback gateway); nothing is discovered. The JSON summary goes to stdout
(and to `--output`); exit code 1 when the share of failed requests exceeds `--max-error-ratio`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from hdrh.histogram import HdrHistogram

from shared.events import AccessEvent, AccessResult, BadgeStatus
from tools import load_report

DEFAULT_TARGET = "http://127.0.0.1:8080"
EVENTS_PATH = "/api/v1/events"

MAX_RATE = 100_000.0  # events per second
MAX_DURATION_S = 3600.0
MAX_EVENTS = 10_000_000
MAX_BATCH = 10_000  # the gateway's default MAX_EVENTS_PER_REQUEST
MAX_CONCURRENCY = 1_000

_LATENCY_MAX_US = 10 * 60 * 1_000_000  # 10 minutes; anything slower is clamped to it

_RESULTS = tuple(AccessResult)
_RESULT_WEIGHTS = (90, 8, 1, 1)
_BADGE_STATUSES = tuple(BadgeStatus)
_BADGE_WEIGHTS = (95, 2, 2, 1)
_DEVICE_STATUSES = ("normal", "degraded", "offline")
_DEVICE_WEIGHTS = (97, 2, 1)


class EventGenerator:
    """Plausible badge swipes happening now.

    A few people and doors are much busier than the rest (Zipf-like weights, as in a real
    building: the main entrance, the people who come and go all day); each person keeps one
    badge and one home facility; most swipes are granted with valid badges; doors are sometimes
    held open and a few entries happen without a badge.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        people: int = 500,
        doors: int = 60,
        facilities: int = 3,
        shape: str = "fleet",
    ) -> None:
        if people < 1 or doors < 1 or facilities < 1:
            raise ValueError("people, doors and facilities must each be at least 1")
        self.shape = shape
        self._rng = random.Random(seed)
        self._people = [f"person-{i:05d}" for i in range(people)]
        self._person_weights = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(people)))
        self._doors = [f"door-{i:03d}" for i in range(doors)]
        self._door_weights = list(itertools.accumulate(1 / (i + 1) for i in range(doors)))
        self._door_facility = {door: f"facility-{i % facilities}" for i, door in enumerate(self._doors)}
        # A deterministic run prefix keeps ids unique across runs and reproducible within one.
        self._run = uuid.UUID(int=self._rng.getrandbits(128)).hex[:12]
        self._sequence = itertools.count()

    def _pick(self, values: Sequence[str], cumulative: Sequence[float]) -> str:
        return self._rng.choices(values, cum_weights=cumulative, k=1)[0]

    def event(self) -> dict[str, Any]:
        """One event as a JSON-ready dict in the chosen shape, validated by the fleet's model."""
        n = next(self._sequence)
        person = self._pick(self._people, self._person_weights)
        door = self._pick(self._doors, self._door_weights)
        now = datetime.now(UTC)
        result = self._rng.choices(_RESULTS, weights=_RESULT_WEIGHTS, k=1)[0]
        event_id = f"load-{self._run}-{n}"
        if self.shape == "original":
            # The original load generator: no badge fields, naive ISO timestamp (read as UTC).
            message: dict[str, Any] = {
                "event_id": event_id,
                "timestamp": now.replace(tzinfo=None).isoformat(timespec="microseconds"),
                "person_id": person,
                "door_id": door,
                "access_result": result.value,
            }
            AccessEvent.model_validate(message)
            return message
        event = AccessEvent(
            event_id=event_id,
            timestamp=now,
            person_id=person,
            door_id=door,
            badge_id="badge-" + person.removeprefix("person-"),
            access_result=result,
            badge_status=self._rng.choices(_BADGE_STATUSES, weights=_BADGE_WEIGHTS, k=1)[0],
            door_held_open_time=round(self._rng.expovariate(1 / 4.0), 2) if self._rng.random() < 0.3 else 0.0,
            entry_without_badge=self._rng.random() < 0.005,
            device_status=self._rng.choices(_DEVICE_STATUSES, weights=_DEVICE_WEIGHTS, k=1)[0],
            facility_id=self._door_facility[door],
        )
        return event.model_dump(mode="json")

    @property
    def run_prefix(self) -> str:
        """Every event id of this run starts with it (the database cross-check selects on it)."""
        return f"load-{self._run}-"

    def body(self, count: int) -> bytes:
        """A request body: one object for a single event, an array otherwise."""
        if count == 1:
            return orjson.dumps(self.event())
        return orjson.dumps([self.event() for _ in range(count)])


@dataclass
class RunStats:
    requests: int = 0
    events_sent: int = 0
    events_accepted: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency_us: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _LATENCY_MAX_US, 3))
    max_start_delay_s: float = 0.0

    def record_latency(self, seconds: float) -> None:
        self.latency_us.record_value(min(max(int(seconds * 1_000_000), 1), _LATENCY_MAX_US))


@dataclass(frozen=True)
class LoadPlan:
    target: str
    rate: float
    duration_s: float
    max_events: int
    batch_size: int
    concurrency: int
    timeout_s: float
    api_key: str | None = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(url: str, *, explicit: bool) -> str:
    """The gateway base URL, normalised; an implicit target must be on this machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--target must be an http(s) URL with a host, got {url!r}")
    if not explicit and not _is_loopback(parts.hostname):
        raise ValueError(f"refusing the implicit non-loopback target {url!r}; name it with --target")
    return url.rstrip("/")


async def run_load(
    plan: LoadPlan,
    generator: EventGenerator,
    stop: asyncio.Event | None = None,
    stats: RunStats | None = None,
) -> dict[str, Any]:
    """Send the planned load and return the summary (also usable from benchmarks and tests)."""
    stop = stop or asyncio.Event()
    stats = stats or RunStats()
    total_requests = math.ceil(plan.max_events / plan.batch_size)
    interval = plan.batch_size / plan.rate
    headers = {"content-type": "application/json"}
    if plan.api_key:
        headers["x-api-key"] = plan.api_key
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    next_index = itertools.count()
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + plan.duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            index = next(next_index)
            due = start + index * interval
            if index >= total_requests or due >= deadline:
                return
            delay = due - loop.time()
            if delay > 0:
                # Wake early when the run is stopped; otherwise sleep until the request is due.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return
            else:
                stats.max_start_delay_s = max(stats.max_start_delay_s, -delay)
            remaining = plan.max_events - index * plan.batch_size
            count = min(plan.batch_size, remaining)
            body = generator.body(count)
            stats.requests += 1
            stats.events_sent += count
            try:
                response = await client.post(EVENTS_PATH, content=body, headers=headers)
            except httpx.TimeoutException:
                stats.errors["timeout"] += 1
                continue
            except httpx.HTTPError as exc:
                stats.errors[type(exc).__name__] += 1
                continue
            finally:
                stats.record_latency(loop.time() - due)
            stats.by_status[str(response.status_code)] += 1
            if response.status_code == 202:
                try:
                    stats.events_accepted += int(response.json()["accepted"])
                except (ValueError, KeyError, TypeError):
                    stats.errors["bad_202_body"] += 1
            else:
                stats.errors[f"http_{response.status_code}"] += 1

    async with httpx.AsyncClient(
        base_url=plan.target,
        timeout=plan.timeout_s,
        limits=limits,
        headers={"user-agent": "sentinel-load-test"},
    ) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(plan.concurrency)]
        await asyncio.gather(*workers)
    elapsed = max(loop.time() - start, 1e-9)
    return summarise(plan, stats, elapsed, interrupted=stop.is_set())


async def run_kafka_load(
    plan: LoadPlan,
    generator: EventGenerator,
    bootstrap: str,
    topic: str,
    stop: asyncio.Event | None = None,
    stats: RunStats | None = None,
) -> dict[str, Any]:
    """Publish the planned events to `topic`, open-model: event *n* is sent at `start + n / rate`
    whatever the acknowledgements before it; latency is due time → broker acknowledgement."""
    from aiokafka.errors import KafkaError

    from shared.kafka import create_producer

    stop = stop or asyncio.Event()
    stats = stats or RunStats()
    loop = asyncio.get_running_loop()
    producer = create_producer(bootstrap, request_timeout_ms=int(plan.timeout_s * 1000))
    try:
        await asyncio.wait_for(producer.start(), timeout=plan.timeout_s)
    except (KafkaError, TimeoutError, OSError) as exc:
        stats.errors[f"broker_unavailable: {type(exc).__name__}"] += 1
        with contextlib.suppress(Exception):
            await producer.stop()
        return summarise(plan, stats, 1e-9, interrupted=stop.is_set(), target=f"kafka://{bootstrap}/{topic}")
    pending: set[asyncio.Future[Any]] = set()

    def acknowledged(due: float, future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        stats.record_latency(loop.time() - due)
        if future.cancelled() or future.exception() is not None:
            error = "cancelled" if future.cancelled() else type(future.exception()).__name__
            stats.errors[error] += 1
        else:
            stats.events_accepted += 1

    start = loop.time()
    deadline = start + plan.duration_s
    index = 0
    try:
        while index < plan.max_events and not stop.is_set():
            now = loop.time()
            if now >= deadline:
                break
            due_count = min(plan.max_events, int((now - start) * plan.rate) + 1)
            while index < due_count:
                due = start + index / plan.rate
                stats.max_start_delay_s = max(stats.max_start_delay_s, now - due)
                event = generator.event()
                try:
                    future = await producer.send(
                        topic, orjson.dumps(event), key=str(event["door_id"]).encode()
                    )
                except KafkaError as exc:
                    stats.errors[type(exc).__name__] += 1
                else:
                    pending.add(future)
                    future.add_done_callback(lambda f, d=due: acknowledged(d, f))
                stats.requests += 1
                stats.events_sent += 1
                index += 1
            next_due = start + index / plan.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, min(next_due, deadline) - loop.time()))
        if pending:
            await asyncio.wait(pending, timeout=plan.timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
    elapsed = max(loop.time() - start, 1e-9)
    return summarise(plan, stats, elapsed, interrupted=stop.is_set(), target=f"kafka://{bootstrap}/{topic}")


def summarise(
    plan: LoadPlan, stats: RunStats, elapsed_s: float, *, interrupted: bool, target: str | None = None
) -> dict[str, Any]:
    hist = stats.latency_us
    has_latency = hist.get_total_count() > 0

    def ms(value: float) -> float | None:
        return round(value / 1000.0, 3) if has_latency else None

    failed = sum(stats.errors.values())
    return {
        "target": target or plan.target + EVENTS_PATH,
        "requested": {
            "rate": plan.rate,
            "duration_s": plan.duration_s,
            "max_events": plan.max_events,
            "batch_size": plan.batch_size,
            "concurrency": plan.concurrency,
        },
        "elapsed_s": round(elapsed_s, 3),
        "interrupted": interrupted,
        "requests": stats.requests,
        "sent": stats.events_sent,
        "accepted": stats.events_accepted,
        "failed_requests": failed,
        "responses_by_status": dict(sorted(stats.by_status.items())),
        "errors": dict(sorted(stats.errors.items())),
        "achieved_rate": round(stats.events_sent / elapsed_s, 2),
        "accepted_rate": round(stats.events_accepted / elapsed_s, 2),
        "max_start_delay_ms": round(stats.max_start_delay_s * 1000, 3),
        "latency_ms": {
            "p50": ms(hist.get_value_at_percentile(50)),
            "p95": ms(hist.get_value_at_percentile(95)),
            "p99": ms(hist.get_value_at_percentile(99)),
            "max": ms(hist.get_max_value()),
            "mean": ms(hist.get_mean_value()),
        },
    }


def _bounded(kind: type[float] | type[int], low: float, high: float, name: str) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name} must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.load_test",
        description="Publish realistic access events at a target rate and report what the fleet stored.",
    )
    parser.add_argument(
        "--via",
        choices=("kafka", "http"),
        default="kafka",
        help="kafka: publish to the topic (default); http: post to the gateway's /api/v1/events",
    )
    parser.add_argument("--target", help=f"gateway base URL (default: {DEFAULT_TARGET})")
    parser.add_argument(
        "--kafka",
        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--topic", help="access-events topic (default: ACCESS_EVENTS_TOPIC, else access-events)"
    )
    parser.add_argument(
        "--metrics-url",
        help="base URL of the event processor's /metrics (default: the gateway); 'none' to skip",
    )
    parser.add_argument("--prometheus", help="Prometheus base URL: also report the run's figures by PromQL")
    parser.add_argument(
        "--prometheus-wait",
        type=_bounded(float, 0, 300, "--prometheus-wait"),
        default=20.0,
        help="seconds to let Prometheus scrape the final counts before querying it (default: 20)",
    )
    parser.add_argument(
        "--database-url", help="cross-check in PostgreSQL: the run's rows and exact latency (default: none)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=_bounded(float, 0, 600, "--drain-timeout"),
        default=30.0,
        help="seconds to wait after sending for the processor to store everything (default: 30)",
    )
    parser.add_argument(
        "--min-per-minute",
        type=_bounded(float, 0, 1e9, "--min-per-minute"),
        default=2500.0,
        help="target: stored events per minute at least (default: 2500)",
    )
    parser.add_argument(
        "--max-mean-latency",
        type=_bounded(float, 0.001, 3600, "--max-mean-latency"),
        default=1.0,
        help="target: average event -> stored latency below this many seconds (default: 1)",
    )
    parser.add_argument("--report-dir", type=Path, help="write load-test.json and load-test.html here")
    parser.add_argument(
        "--rate",
        type=_bounded(float, 0.01, MAX_RATE, "--rate"),
        default=100.0,
        help="events per second (default: 100)",
    )
    parser.add_argument(
        "--duration",
        type=_bounded(float, 0.1, MAX_DURATION_S, "--duration"),
        default=10.0,
        help="seconds to run (default: 10)",
    )
    parser.add_argument(
        "--max-events",
        type=_bounded(int, 1, MAX_EVENTS, "--max-events"),
        help="stop after this many events (default: rate x duration)",
    )
    parser.add_argument(
        "--batch-size",
        type=_bounded(int, 1, MAX_BATCH, "--batch-size"),
        default=1,
        help="events per request; more than 1 posts a JSON array (default: 1)",
    )
    parser.add_argument(
        "--concurrency",
        type=_bounded(int, 1, MAX_CONCURRENCY, "--concurrency"),
        default=16,
        help="requests in flight at most (default: 16)",
    )
    parser.add_argument(
        "--timeout",
        type=_bounded(float, 0.1, 300, "--timeout"),
        default=10.0,
        help="seconds per request (default: 10)",
    )
    parser.add_argument(
        "--shape",
        choices=("fleet", "original"),
        default="fleet",
        help="fleet: every field of the event format; original: the original system's 5-field message",
    )
    parser.add_argument(
        "--people",
        type=_bounded(int, 1, 10_000_000, "--people"),
        default=500,
        help="distinct person ids in the generated events (default: 500)",
    )
    parser.add_argument(
        "--doors",
        type=_bounded(int, 1, 1_000_000, "--doors"),
        default=60,
        help="distinct door ids (default: 60)",
    )
    parser.add_argument(
        "--facilities",
        type=_bounded(int, 1, 10_000, "--facilities"),
        default=3,
        help="distinct facility ids (default: 3)",
    )
    parser.add_argument("--seed", type=int, help="make the people, doors and outcomes reproducible")
    parser.add_argument("--api-key", help="sent as X-API-Key (needed when the gateway sets API_KEYS)")
    parser.add_argument(
        "--max-error-ratio",
        type=_bounded(float, 0, 1, "--max-error-ratio"),
        default=0.01,
        help="exit 1 when more than this share of requests fail (default: 0.01)",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON summary to this file")
    return parser


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    target = check_target(args.target or DEFAULT_TARGET, explicit=args.target is not None)
    max_events = args.max_events or max(1, math.ceil(args.rate * args.duration))
    return LoadPlan(
        target=target,
        rate=args.rate,
        duration_s=args.duration,
        max_events=min(max_events, MAX_EVENTS),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        api_key=args.api_key,
    )


def _kafka_target(args: argparse.Namespace) -> tuple[str, str]:
    import os

    explicit = args.kafka is not None
    bootstrap = args.kafka or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BROKERS")
    explicit = explicit or bootstrap is not None
    bootstrap = bootstrap or "127.0.0.1:9092"
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        if not explicit and not _is_loopback(host):
            raise ValueError(f"refusing the implicit non-loopback broker {server!r}; name it with --kafka")
    topic = args.topic or os.environ.get("ACCESS_EVENTS_TOPIC") or "access-events"
    return bootstrap, topic


async def _progress(stats: RunStats, watcher: load_report.MetricsWatcher | None, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        stored = ""
        if watcher is not None and await watcher.scrape() is not None and watcher.timeline:
            point = watcher.timeline[-1]
            total = (watcher.summary() or {}).get("processed", 0)
            p95 = point["p95_s"]
            stored = f", stored {total:.0f} ({point['processed_per_s']:.0f}/s" + (
                f", p95 {p95 * 1000:.0f} ms)" if p95 is not None else ")"
            )
        print(
            f"  {time.monotonic() - started:5.1f}s sent {stats.events_sent}, acknowledged "
            f"{stats.events_accepted}, failed {sum(stats.errors.values())}{stored}",
            file=sys.stderr,
            flush=True,
        )


async def _drain(watcher: load_report.MetricsWatcher, expected: int, timeout_s: float) -> None:
    """Wait until the processor has handled `expected` more events (stored or duplicates)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await watcher.scrape()
        summary = watcher.summary()
        if summary is not None and summary["latency_count"] >= expected:
            return
        await asyncio.sleep(0.5)


async def _main_async(args: argparse.Namespace, plan: LoadPlan, generator: EventGenerator) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics_url = None if args.metrics_url == "none" else (args.metrics_url or plan.target)
    stats = RunStats()
    async with httpx.AsyncClient(timeout=5) as client:
        watcher = load_report.MetricsWatcher(metrics_url, client) if metrics_url else None
        if watcher is not None:
            await watcher.scrape()
        progress_stop = asyncio.Event()
        progress = asyncio.create_task(_progress(stats, watcher, progress_stop))
        started_at = time.time()
        try:
            if args.via == "kafka":
                bootstrap, topic = _kafka_target(args)
                run = await run_kafka_load(plan, generator, bootstrap, topic, stop, stats)
            else:
                run = await run_load(plan, generator, stop, stats)
            if watcher is not None and run["accepted"]:
                await _drain(watcher, run["accepted"], args.drain_timeout)
        finally:
            progress_stop.set()
            await progress
        processing: dict[str, Any] = {}
        if watcher is not None:
            processing["metrics"] = watcher.summary() or {"error": watcher.error}
    if args.prometheus:
        await asyncio.sleep(args.prometheus_wait)  # at least one scrape interval after the drain
        try:
            processing["prometheus"] = await load_report.prometheus_report(
                args.prometheus, time.time() - started_at, time.time()
            )
        except (httpx.HTTPError, ValueError) as exc:
            processing["prometheus"] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.database_url:
        try:
            processing["database"] = await load_report.database_report(
                args.database_url, generator.run_prefix
            )
        except Exception as exc:  # the cross-check is optional; its failure is reported, not raised
            processing["database"] = {"error": f"{type(exc).__name__}: {exc}"}
    # The figures come from Prometheus when asked, else from the processor's metrics, else the database.
    source = next(
        (n for n in ("prometheus", "metrics", "database") if processing.get(n, {}).get("mean_s") is not None),
        None,
    )
    chosen = processing.get(source, {}) if source else {}
    processed = chosen.get("processed", chosen.get("stored"))
    verdict = load_report.verdict(
        processed, run["elapsed_s"], chosen.get("mean_s"), args.min_per_minute, args.max_mean_latency
    )
    report = {
        **run,
        "via": args.via,
        "run_prefix": generator.run_prefix,
        "processing": processing,
        "figures_from": source,
        "verdict": verdict,
        "timeline": watcher.timeline if watcher is not None else [],
    }
    report["figures"] = {
        "sent": run["sent"],
        "acknowledged": run["accepted"],
        "stored": processed,
        "stored per minute": verdict["events_per_minute"],
        "event → stored mean (s)": chosen.get("mean_s"),
        "p50 (s)": chosen.get("p50_s"),
        "p95 (s)": chosen.get("p95_s"),
        "p99 (s)": chosen.get("p99_s"),
        "figures from": source,
        "database cross-check (rows)": processing.get("database", {}).get("stored"),
    }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = plan_from_args(args)
        if args.via == "kafka":
            _kafka_target(args)
    except ValueError as exc:
        parser.error(str(exc))
    generator = EventGenerator(
        seed=args.seed, people=args.people, doors=args.doors, facilities=args.facilities, shape=args.shape
    )
    where = " ".join(_kafka_target(args)) if args.via == "kafka" else plan.target + EVENTS_PATH
    print(
        f"load test: {plan.rate:g} events/s for up to {plan.duration_s:g}s "
        f"({plan.max_events} events at most) via {args.via} -> {where}",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    report = asyncio.run(_main_async(args, plan, generator))
    text = json.dumps(report, indent=2, default=str)
    print(text, flush=True)
    if args.output:
        args.output.write_text(text + "\n")
    if args.report_dir:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "load-test.json").write_text(text + "\n")
        (args.report_dir / "load-test.html").write_text(load_report.html_report(report))
    verdict = report["verdict"]
    print(
        f"load test finished in {time.monotonic() - started:.1f}s: "
        + ("target met" if verdict["met"] else "target MISSED: " + "; ".join(verdict["reasons"])),
        file=sys.stderr,
        flush=True,
    )
    requests = report["requests"]
    if requests == 0 or report["failed_requests"] / requests > args.max_error_ratio:
        return 1
    return 0 if verdict["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
