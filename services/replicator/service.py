"""The replicator's supervision loop: catch up, wait, repeat; back off while a database is down.

Each database has its own circuit breaker (`replication_source`, `replication_target` in
CIRCUIT_BREAKER_CONFIG) and its own backoff (exponential with full jitter, as in the AWS architecture
note on backoff): a source outage and a target outage are reported separately in `/status`,
in `/ready` and in `replication_errors_total{database}`, and whichever comes back first is
not kept waiting for the other's longer delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, Field

from services.replicator import metrics
from services.replicator.replication import (
    BatchResult,
    SourceError,
    TargetError,
    Watermark,
    backlog_seconds,
    ensure_state,
    lag_seconds,
    read_watermark,
    replicate_batch,
)
from services.replicator.settings import ReplicatorSettings
from services.replicator.target_schema import SchemaReport, prepare_target
from shared.breaker import CircuitBreakerOpen, Permit, get_breaker_registry
from shared.db import CONNECT_TIMEOUT_S, create_pool
from shared.performance.operation import operation
from shared.resources import ResourceGuard

log = logging.getLogger(__name__)

DATABASES = ("source", "target")
# While the loop waits longer than this, the backlog gauge is refreshed at this period, so a
# deliberately long interval (the optimizer deferring replication) still reports how far
# behind the replica is, and the optimizer can end the deferral in time.
GAUGE_REFRESH_S = 1.0


@dataclass
class Backoff:
    base_s: float = 0.2
    max_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return random.uniform(0, min(self.max_s, self.base_s * 2**self.attempt))  # noqa: S311  jitter, not a secret

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class ReplicatorState:
    watermark: Watermark | None = None
    lag_seconds: float | None = None
    backlog_seconds: float | None = None
    last_batch: BatchResult | None = None
    last_batch_at: float | None = None
    rows_this_run: int = 0
    errors: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(DATABASES))
    schema: SchemaReport | None = None
    throttled_since: float | None = None


class WatermarkView(BaseModel):
    last_xid: str | None = Field(description="transaction id (xid8, as text) of the last replicated row")
    last_seq: int | None


class LastBatch(BaseModel):
    rows_read: int
    rows_inserted: int
    seconds: float
    newest_event_time: str | None
    at: float | None = Field(description="Unix time the batch finished")


class TimescaleInfo(BaseModel):
    enabled: bool
    compress_after: str | None
    retention: str | None


class ReplicatorStatus(BaseModel):
    """`GET /status` of the replicator: watermark, rows replicated, backlog, lag, errors."""

    watermark: WatermarkView = Field(description="commit-order position of the last replicated row")
    rows_replicated: int | None = Field(description="rows replicated since the stream began")
    rows_replicated_this_run: int
    backlog_seconds: float | None = Field(description="age of the oldest event not yet replicated")
    lag_seconds: float | None = Field(description="now minus the time of the newest replicated event")
    batch_size: int
    interval_seconds: float
    last_batch: LastBatch | None
    errors: dict[str, str | None] = Field(description="last error per database (source, target)")
    breakers: dict[str, str] = Field(description="state of the breaker of each database")
    throttled: bool = Field(description="paused by the resource guard")
    timescaledb: TimescaleInfo | None


class ReplicatorService:
    def __init__(self, settings: ReplicatorSettings, guard: ResourceGuard | None = None) -> None:
        self.settings = settings
        self.guard = guard
        self.batch_size = settings.replication_batch_size
        self.interval_s = settings.replication_interval
        self.state = ReplicatorState()
        self.source: asyncpg.Pool | None = None
        self.target: asyncpg.Pool | None = None
        self._backoff = {db: Backoff(max_s=settings.replication_backoff_max_s) for db in DATABASES}
        registry = get_breaker_registry(settings.circuit_breaker_config)
        self.breakers = {db: registry.get(f"replication_{db}") for db in DATABASES}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # set by stop() and retune(): a waiting loop looks again
        self._task: asyncio.Task[None] | None = None

    def retune(self, *, batch_size: int | None = None, interval_s: float | None = None) -> None:
        """New batch size and/or interval, live; the interval counts from the start of the last
        catch-up."""
        if batch_size is not None:
            self.batch_size = batch_size
        if interval_s is not None:
            self.interval_s = interval_s
        self._wake.set()

    async def open(self) -> None:
        # min_size=0: the service starts (and reports what is missing) while a database is down.
        timeout = self.settings.replication_statement_timeout_s
        self.source = await create_pool(
            self.settings.require_database_url(), min_size=0, max_size=2, command_timeout=timeout
        )
        self.target = await create_pool(
            self.settings.require_timescale_url(), min_size=0, max_size=2, command_timeout=timeout
        )

    async def close(self) -> None:
        await self.stop()
        for pool in (self.target, self.source):
            if pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), 10)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="replicator")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=15)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def prepare(self) -> None:
        """Target schema and the watermark row; raises TargetError while the target is down."""
        try:
            self.state.schema = await prepare_target(self.settings.require_timescale_url(), self.settings)
            assert self.target is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
            await ensure_state(self.target, self.settings.replication_stream)
        except Exception as exc:
            raise TargetError(f"{type(exc).__name__}: {exc}") from exc

    async def step(self) -> BatchResult:
        """One batch through both breakers, timed and traced as `replicator.batch`."""
        with operation("replicator.batch", batch_size=self.batch_size):
            return await self._step()

    async def _step(self) -> BatchResult:
        """One batch through both breakers; updates metrics and state."""
        assert self.source is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        assert self.target is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        source_permit = self._permit("source")
        try:
            target_permit = self._permit("target")
        except BaseException:
            source_permit.release()
            raise
        try:
            async with (
                _acquire(self.source, SourceError) as source,
                _acquire(self.target, TargetError) as target,
            ):
                result = await replicate_batch(
                    source,
                    target,
                    stream=self.settings.replication_stream,
                    batch_size=self.batch_size,
                    timeout_s=self.settings.replication_statement_timeout_s,
                )
        except SourceError as exc:
            source_permit.record_exception(exc.__cause__ or exc)
            target_permit.release()
            raise
        except TargetError as exc:
            target_permit.record_exception(exc.__cause__ or exc)
            source_permit.release()
            raise
        except BaseException:
            source_permit.release()
            target_permit.release()
            raise
        source_permit.success()
        target_permit.success()
        self.state.watermark = result.watermark
        if result.rows_read:
            self.state.last_batch = result
            self.state.last_batch_at = time.time()
            self.state.rows_this_run += result.rows_inserted
            metrics.ROWS_TOTAL.inc(result.rows_inserted)
            metrics.BATCH_SECONDS.observe(result.seconds)
            metrics.BATCH_ROWS.observe(result.rows_read)
            metrics.WATERMARK_SEQ.set(result.watermark.last_seq)
        return result

    async def refresh_gauges(self) -> None:
        assert self.source is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        assert self.target is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        try:
            lag = await lag_seconds(self.target)
        except Exception as exc:
            raise TargetError(f"{type(exc).__name__}: {exc}") from exc
        watermark = self.state.watermark
        try:
            if watermark is None:
                watermark = await read_watermark(self.target, self.settings.replication_stream)
                self.state.watermark = watermark
        except Exception as exc:
            raise TargetError(f"{type(exc).__name__}: {exc}") from exc
        try:
            backlog = await backlog_seconds(self.source, watermark)
        except Exception as exc:
            raise SourceError(f"{type(exc).__name__}: {exc}") from exc
        self.state.lag_seconds, self.state.backlog_seconds = lag, backlog
        if lag is not None:
            metrics.LAG_SECONDS.set(lag)
        metrics.BACKLOG_SECONDS.set(backlog)

    async def catch_up(self) -> int:
        """`_catch_up` as one cycle: timed and traced as `replicator.cycle`."""
        with operation("replicator.cycle"):
            return await self._catch_up()

    async def _catch_up(self) -> int:
        """Batches until one comes back short (the source is drained up to now); rows inserted.

        While writes arrive as fast as batches copy them, no batch comes back short; so a
        longer interval set meanwhile (the optimizer deferring replication during a burst)
        ends the catch-up after the current batch, and the backlog gauge is refreshed every
        GAUGE_REFRESH_S instead of only at the end."""
        inserted = 0
        interval_at_start = self.interval_s
        refreshed = time.monotonic()
        while not self._stopping.is_set():
            await self._wait_for_resources()
            result = await self.step()
            self._succeeded("source")
            self._succeeded("target")
            inserted += result.rows_inserted
            if result.rows_read < self.batch_size or self.interval_s > interval_at_start:
                break
            if time.monotonic() - refreshed >= GAUGE_REFRESH_S:
                await self.refresh_gauges()
                refreshed = time.monotonic()
        await self.refresh_gauges()
        return inserted

    async def run_once(self) -> int:
        """`--once`: schema, one catch-up, done. Errors propagate (the exit code reports them)."""
        await self.prepare()
        return await self.catch_up()

    async def run(self) -> None:
        prepared = False
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            failed_delay: float | None = None
            # The interval runs from the start of a catch-up, not its end: an event stored just
            # after a catch-up read the source waits one interval, not an interval plus the rest
            # of that catch-up (which, at a steady 5,000 events/s on a busy host, made the
            # backlog's worst case the interval plus two catch-ups).
            cycle_started = loop.time()
            try:
                if not prepared:
                    await self.prepare()
                    prepared = True
                await self.catch_up()
            except (SourceError, TargetError) as exc:
                database = "source" if isinstance(exc, SourceError) else "target"
                failed_delay = self._failed(database, exc)
            except Exception as exc:  # a bug must not end replication silently
                log.exception("replication cycle failed")
                failed_delay = self._failed("target", exc)
            if failed_delay is not None:
                await self._pause(functools.partial(float, failed_delay), refresh=False)
            else:
                await self._pause(lambda: self.interval_s, refresh=True, since=cycle_started)

    async def _pause(self, delay: Callable[[], float], *, refresh: bool, since: float | None = None) -> None:
        """Wait until `delay()` seconds after `since` (default: now), re-reading it when retune()
        wakes the loop (a shorter interval ends the wait at once); refreshes the backlog gauge
        during long waits."""
        loop = asyncio.get_running_loop()
        started = loop.time() if since is None else since
        while not self._stopping.is_set():
            remaining = started + delay() - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(remaining, GAUGE_REFRESH_S))
            if refresh and not self._wake.is_set() and started + delay() - loop.time() > 0:
                with contextlib.suppress(SourceError, TargetError):
                    await self.refresh_gauges()

    async def _wait_for_resources(self) -> None:
        if self.guard is None or not self.guard.throttled:
            return
        self.state.throttled_since = time.time()
        log.info("replication held: %s above its warning threshold", ", ".join(self.guard.reasons))
        while not self._stopping.is_set() and not await self.guard.wait_until_clear(timeout_s=1.0):
            pass
        self.state.throttled_since = None

    def _permit(self, database: str) -> Permit:
        """Admission by the database's breaker; an open breaker counts as that database failing."""
        try:
            return self.breakers[database].acquire()
        except CircuitBreakerOpen as exc:
            error = SourceError if database == "source" else TargetError
            raise error(str(exc)) from exc

    def _succeeded(self, database: str) -> None:
        if self.state.errors[database] is not None:
            log.info("replication %s database is back", database)
        self.state.errors[database] = None
        self._backoff[database].reset()
        metrics.UP.labels(database=database).set(1)

    def _failed(self, database: str, exc: BaseException) -> float:
        delay = self._backoff[database].next_delay()
        if isinstance(exc.__cause__, CircuitBreakerOpen):
            delay = max(delay, min(exc.__cause__.retry_after, self.settings.replication_backoff_max_s))
        self.state.errors[database] = str(exc)[:500]
        metrics.ERRORS.labels(database=database).inc()
        metrics.UP.labels(database=database).set(0)
        log.warning("replication %s database failed (%s); retrying in %.1fs", database, exc, delay)
        return max(delay, 0.05)

    async def check_source(self) -> None:
        assert self.source is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        await self.source.fetchval("SELECT 1")

    async def check_target(self) -> None:
        assert self.target is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
        await self.target.fetchval("SELECT 1")

    def status(self) -> ReplicatorStatus:
        state = self.state
        watermark = state.watermark
        last = state.last_batch
        return ReplicatorStatus(
            watermark=WatermarkView(
                last_xid=watermark.last_xid if watermark else None,
                last_seq=watermark.last_seq if watermark else None,
            ),
            rows_replicated=watermark.rows_total if watermark else None,
            rows_replicated_this_run=state.rows_this_run,
            backlog_seconds=state.backlog_seconds,
            lag_seconds=state.lag_seconds,
            batch_size=self.batch_size,
            interval_seconds=self.interval_s,
            last_batch=None
            if last is None
            else LastBatch(
                rows_read=last.rows_read,
                rows_inserted=last.rows_inserted,
                seconds=round(last.seconds, 4),
                newest_event_time=_iso(last.newest_time),
                at=state.last_batch_at,
            ),
            errors=dict(state.errors),
            breakers={db: breaker.state for db, breaker in self.breakers.items()},
            throttled=state.throttled_since is not None,
            timescaledb=None
            if state.schema is None
            else TimescaleInfo(
                enabled=state.schema.timescale,
                compress_after=state.schema.compression_after,
                retention=state.schema.retention,
            ),
        )


@contextlib.asynccontextmanager
async def _acquire(
    pool: asyncpg.Pool, error: type[SourceError] | type[TargetError]
) -> AsyncIterator[PoolConnectionProxy]:
    """A pool connection; failing to get one is reported as the failure of that database."""
    try:
        # A new connection may take up to CONNECT_TIMEOUT_S (a lost name lookup is retried).
        conn = await pool.acquire(timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise error(f"{type(exc).__name__}: {exc}") from exc
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await pool.release(conn, timeout=5)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
