"""Circuit breakers with the feature set of resilience4j, native to asyncio.

States closed → open → half_open → closed/open. While closed, outcomes go into a sliding
window (the last N calls, or the last N seconds); once the window holds the minimum number
of calls and the failure rate or the slow-call rate reaches its threshold — or, in the simple
form, after `failure_threshold` consecutive failures — the breaker opens. After
`wait_duration_in_open_state` it lets exactly `permitted_calls_in_half_open_state` trial
calls through and rejects every other call at once; the trial outcomes decide between closed
and open.

Hand-written rather than taken from pybreaker, aiobreaker or purgatory because those let
every concurrent call through while half-open (or lock a thread around the state), have no
sliding windows or slow-call detection, and cannot tell a 4xx from a 5xx. Every state change
here happens in synchronous code between two awaits, so the event loop's single thread is the
only lock needed: 100 concurrent calls in half-open reach the dependency exactly `permitted`
times.

Usage::

    breaker = get_breaker_registry(settings.circuit_breaker_config).get("database")
    rows = await breaker.call(pool.fetch, "SELECT ...")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from shared.breaker import metrics
from shared.breaker.classify import Classifier, Verdict
from shared.breaker.config import (
    BreakerConfig,
    build_config,
    load_breaker_file,
    parse_breaker_document,
)
from shared.breaker.errors import CircuitBreakerOpen, State
from shared.breaker.window import CountWindow, TimeWindow, Window, WindowStats

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# How long a caller rejected during half-open should wait: the trial calls are usually
# quick, so a short hint is more useful than the whole open-state wait.
HALF_OPEN_RETRY_AFTER_S = 1.0


class Permit:
    """One admitted call; report its end once: `success`, `failure`, `record_exception` or `release`."""

    __slots__ = ("_breaker", "_done", "_generation", "_started")

    def __init__(self, breaker: CircuitBreaker, generation: int, started: float) -> None:
        self._breaker = breaker
        self._generation = generation
        self._started = started
        self._done = False

    def _finish(self, verdict: Verdict | None) -> None:
        if self._done:
            return
        self._done = True
        self._breaker._record(self._generation, verdict, self._breaker._clock() - self._started)

    def success(self) -> None:
        self._finish("success")

    def failure(self) -> None:
        self._finish("failure")

    def record_exception(self, exc: BaseException) -> None:
        self._finish(self._breaker.classifier.exception(exc))

    def record_result(self, value: object) -> None:
        self._finish(self._breaker.classifier.result(value))

    def release(self) -> None:
        """The call never reached the dependency (e.g. it was cancelled): give the slot back."""
        self._finish(None)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.classifier = Classifier(self.config)
        self._clock = clock
        self._state: State = "closed"
        self._generation = 0
        self._transitions: dict[str, int] = {"closed": 0, "open": 0, "half_open": 0}
        self._outcomes = {"success": 0, "failure": 0, "slow": 0, "rejected": 0, "ignored": 0}
        self._window: Window = self._new_window()
        self._consecutive_failures = 0
        self._state_since = clock()
        self._opened_at_wall: float | None = None
        self._open_until = 0.0
        self._trial_issued = 0
        self._trial_done = 0
        self._trial_failed = 0
        self._trial_slow = 0
        metrics.STATE.labels(name=name).set(0)

    # -- public API -----------------------------------------------------------------------

    @property
    def state(self) -> State:
        self._refresh(self._clock())
        return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until a call may be admitted (0 when calls are admitted now)."""
        now = self._clock()
        self._refresh(now)
        if self._state == "open":
            return max(0.0, self._open_until - now)
        if (
            self._state == "half_open"
            and self._trial_issued >= self.config.permitted_calls_in_half_open_state
        ):
            return self._half_open_retry_after(now)
        return 0.0

    def acquire(self) -> Permit:
        """Admit one call or raise CircuitBreakerOpen at once. Synchronous, so it is atomic on the loop."""
        now = self._clock()
        self._refresh(now)
        if self._state == "open":
            self._reject()
            raise CircuitBreakerOpen(self.name, self._open_until - now, "open")
        if self._state == "half_open":
            if self._trial_issued >= self.config.permitted_calls_in_half_open_state:
                self._reject()
                raise CircuitBreakerOpen(self.name, self._half_open_retry_after(now), "half_open")
            self._trial_issued += 1
        return Permit(self, self._generation, now)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` through the breaker; raises CircuitBreakerOpen when rejected."""
        permit = self.acquire()
        try:
            if self.config.call_timeout is not None:
                async with asyncio.timeout(self.config.call_timeout):
                    result = await fn(*args, **kwargs)
            else:
                result = await fn(*args, **kwargs)
        except Exception as exc:
            permit.record_exception(exc)
            raise
        except BaseException:  # cancelled: the outcome says nothing about the dependency
            permit.release()
            raise
        permit.record_result(result)
        return result

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[Permit]:
        """`async with breaker.guard():` for code that is not one awaitable; an exception is classified."""
        permit = self.acquire()
        try:
            yield permit
        except Exception as exc:
            permit.record_exception(exc)
            raise
        except BaseException:
            permit.release()
            raise
        permit.success()

    def reset(self) -> None:
        """Back to closed with an empty window (an operator's action; counts as a transition)."""
        self._transition("closed", self._clock())

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        self._refresh(now)
        stats = self._window.stats()
        enough = stats.calls >= self.config.effective_minimum_calls
        snap: dict[str, Any] = {
            "state": self._state,
            **self._transitions,
            "failure_rate": round(stats.failure_rate(), 2) if enough else None,
            "slow_call_rate": round(stats.slow_rate(), 2) if enough else None,
            "calls_in_window": stats.calls,
            "failed_calls_in_window": stats.failures,
            "slow_calls_in_window": stats.slow,
            "consecutive_failures": self._consecutive_failures,
            "opened_at": _iso(self._opened_at_wall) if self._state != "closed" else None,
            "state_since_seconds": round(now - self._state_since, 3),
            "retry_after": round(self.retry_after, 3),
            "calls": dict(self._outcomes),
            "config": self.config.model_dump(mode="json"),
        }
        if self._state == "half_open":
            snap["half_open_calls"] = {
                "permitted": self.config.permitted_calls_in_half_open_state,
                "admitted": self._trial_issued,
                "completed": self._trial_done,
                "failed": self._trial_failed,
            }
        return snap

    # -- state machine ----------------------------------------------------------------------

    def _new_window(self) -> Window:
        if self.config.sliding_window_type == "time_based":
            return TimeWindow(self.config.sliding_window_size, self._clock)
        return CountWindow(self.config.sliding_window_size)

    def _half_open_retry_after(self, now: float) -> float:
        if self.config.max_wait_duration_in_half_open_state > 0:
            left = self._state_since + self.config.max_wait_duration_in_half_open_state - now
            return max(0.0, min(left, HALF_OPEN_RETRY_AFTER_S))
        return min(HALF_OPEN_RETRY_AFTER_S, self.config.wait_duration_in_open_state)

    def _refresh(self, now: float) -> None:
        if self._state == "open" and now >= self._open_until:
            self._transition("half_open", now)
        elif (
            self._state == "half_open"
            and self.config.max_wait_duration_in_half_open_state > 0
            and now - self._state_since >= self.config.max_wait_duration_in_half_open_state
        ):
            self._transition("open", now)

    def _reject(self) -> None:
        self._outcomes["rejected"] += 1
        metrics.CALLS.labels(name=self.name, outcome="rejected").inc()

    def _record(self, generation: int, verdict: Verdict | None, duration: float) -> None:
        if verdict is None:
            if generation == self._generation and self._state == "half_open":
                self._trial_issued -= 1
            return
        slow = duration >= self.config.slow_call_duration_threshold
        outcome = (
            "ignored"
            if verdict == "ignored"
            else "failure"
            if verdict == "failure"
            else ("slow" if slow else "success")
        )
        self._outcomes[outcome] += 1
        metrics.CALLS.labels(name=self.name, outcome=outcome).inc()
        if generation != self._generation:
            # Started under an earlier state (e.g. before the breaker opened): it must not
            # count as a trial call or pollute the fresh window.
            return
        if verdict == "ignored":
            if self._state == "half_open":
                self._trial_issued -= 1
            return
        failed = verdict == "failure"
        now = self._clock()
        if self._state == "closed":
            self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
            stats = self._window.record(failed, slow)
            threshold = self.config.failure_threshold
            if (threshold is not None and self._consecutive_failures >= threshold) or self._over_threshold(
                stats, self.config.effective_minimum_calls
            ):
                self._transition("open", now)
        elif self._state == "half_open":
            self._trial_done += 1
            self._trial_failed += failed
            self._trial_slow += slow
            permitted = self.config.permitted_calls_in_half_open_state
            # Open as soon as the trial is lost whatever the remaining calls return.
            if 100.0 * self._trial_failed / permitted >= self.config.failure_rate_threshold or (
                100.0 * self._trial_slow / permitted >= self.config.slow_call_rate_threshold
            ):
                self._transition("open", now)
            elif self._trial_done >= permitted:
                self._transition("closed", now)

    def _over_threshold(self, stats: WindowStats, minimum: int) -> bool:
        if stats.calls < minimum:
            return False
        return (
            stats.failure_rate() >= self.config.failure_rate_threshold
            or stats.slow_rate() >= self.config.slow_call_rate_threshold
        )

    def _transition(self, state: State, now: float) -> None:
        previous = self._state
        self._state = state
        self._generation += 1
        self._state_since = now
        self._transitions[state] += 1
        metrics.TRANSITIONS.labels(name=self.name, state=state).inc()
        metrics.STATE.labels(name=self.name).set(metrics.STATE_VALUE[state])
        if state == "open":
            self._open_until = now + self.config.wait_duration_in_open_state
            if previous == "closed":
                self._opened_at_wall = time.time()
            log.warning(
                "circuit breaker %s: %s → open for %.1fs",
                self.name,
                previous,
                self.config.wait_duration_in_open_state,
            )
        elif state == "half_open":
            self._trial_issued = self._trial_done = self._trial_failed = self._trial_slow = 0
            log.info(
                "circuit breaker %s: open → half_open (%d trial calls)",
                self.name,
                self.config.permitted_calls_in_half_open_state,
            )
        else:
            self._window = self._new_window()
            self._consecutive_failures = 0
            self._opened_at_wall = None
            log.info("circuit breaker %s: %s → closed", self.name, previous)


def _iso(wall: float | None) -> str | None:
    return datetime.fromtimestamp(wall, UTC).isoformat() if wall is not None else None


class BreakerRegistry:
    """Every breaker of a process, by name; names absent from the file get the `defaults`."""

    def __init__(
        self,
        named: dict[str, BreakerConfig] | None = None,
        *,
        defaults: dict[str, Any] | None = None,
        source: str = "<defaults>",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._defaults_raw = defaults or {}
        self._defaults = build_config(self._defaults_raw, {}, source=source, section="defaults")
        self._clock = clock
        self._breakers = {name: CircuitBreaker(name, cfg, clock=clock) for name, cfg in (named or {}).items()}
        # Names some code of this process asked for: the file names breakers for every service,
        # but a process only shows (GET /breaker, /breakers) the ones it actually calls through.
        self._used: set[str] = set()

    @classmethod
    def from_yaml(cls, path: Path, *, clock: Callable[[], float] = time.monotonic) -> BreakerRegistry:
        """Load the breaker file; a wrong value raises BreakerConfigError naming the file and key."""
        defaults, named = load_breaker_file(path)
        return cls(named, defaults=defaults, source=str(path), clock=clock)

    @classmethod
    def from_dict(
        cls, document: dict[str, Any], *, source: str = "<dict>", clock: Callable[[], float] = time.monotonic
    ) -> BreakerRegistry:
        defaults, named = parse_breaker_document(document, source)
        return cls(named, defaults=defaults, source=source, clock=clock)

    @property
    def defaults(self) -> BreakerConfig:
        return self._defaults

    def get(self, name: str) -> CircuitBreaker:
        self._used.add(name)
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = CircuitBreaker(name, self._defaults, clock=self._clock)
        return breaker

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: breaker.snapshot() for name, breaker in sorted(self._breakers.items())}

    def in_use(self) -> dict[str, dict[str, Any]]:
        """Snapshots of the breakers this process calls through (asked for with `get`)."""
        return {name: self._breakers[name].snapshot() for name in sorted(self._used)}


_registries: dict[Path, BreakerRegistry] = {}


def get_breaker_registry(path: Path | None = None) -> BreakerRegistry:
    """The process-wide registry of the breaker file (default: `CIRCUIT_BREAKER_CONFIG`), loaded once."""
    if path is None:
        from shared.settings import get_fleet_settings

        path = get_fleet_settings().circuit_breaker_config
    key = Path(path).resolve()
    registry = _registries.get(key)
    if registry is None:
        registry = _registries[key] = BreakerRegistry.from_yaml(key)
    return registry
