"""The breaker state machine: windows, thresholds, half-open admission, classification, metrics."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from shared.breaker import BreakerConfig, CircuitBreaker, CircuitBreakerOpen
from shared.errors import ApiError

_ids = itertools.count()


def unique_suffix() -> str:
    # Breakers share the process-wide metrics, so each test uses its own names.
    return f"{next(_ids)}_{id(_ids)}"


def state(breaker: CircuitBreaker) -> str:
    # A plain str, so mypy does not narrow the property across awaits.
    return breaker.state


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **settings: object) -> CircuitBreaker:
    return CircuitBreaker(f"test_{unique_suffix()}", BreakerConfig.model_validate(settings), clock=clock)


async def ok() -> str:
    return "ok"


async def fail() -> None:
    raise ConnectionRefusedError("refused")


async def drive(breaker: CircuitBreaker, outcomes: str) -> None:
    """`s` success, `f` connection failure."""
    for outcome in outcomes:
        if outcome == "s":
            await breaker.call(ok)
        else:
            with pytest.raises(ConnectionRefusedError):
                await breaker.call(fail)


async def test_count_window_opens_at_failure_rate_after_minimum_calls() -> None:
    clock = FakeClock()
    breaker = make(clock, sliding_window_size=10, minimum_number_of_calls=4, failure_rate_threshold=50)
    await drive(breaker, "fff")
    assert state(breaker) == "closed"  # 3 calls < minimum 4
    await drive(breaker, "s")
    assert state(breaker) == "open"  # 3 of 4 failed = 75 %
    with pytest.raises(CircuitBreakerOpen) as info:
        await breaker.call(ok)
    assert info.value.name == breaker.name
    assert 0 < info.value.retry_after <= 30


async def test_count_window_forgets_old_calls() -> None:
    clock = FakeClock()
    breaker = make(clock, sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=75)
    await drive(breaker, "ffssss")
    assert state(breaker) == "closed"
    snap = breaker.snapshot()
    assert snap["calls_in_window"] == 4
    assert snap["failed_calls_in_window"] == 0
    await drive(breaker, "fff")
    assert state(breaker) == "open"


async def test_time_window_expires_old_failures() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        sliding_window_type="time_based",
        sliding_window_size=10,
        minimum_number_of_calls=4,
        failure_rate_threshold=50,
    )
    await drive(breaker, "fff")
    clock.advance(11)  # those failures left the 10 s window
    await drive(breaker, "ssss")
    assert state(breaker) == "closed"
    assert breaker.snapshot()["calls_in_window"] == 4
    clock.advance(5)
    await drive(breaker, "ffff")  # 4 of 8 inside the window = 50 %
    assert state(breaker) == "open"


async def test_slow_calls_open_the_breaker() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        sliding_window_size=5,
        minimum_number_of_calls=5,
        slow_call_rate_threshold=60,
        slow_call_duration_threshold=1.0,
    )

    async def slow() -> str:
        clock.advance(2.0)
        return "late"

    for _ in range(2):
        assert await breaker.call(slow) == "late"
    await drive(breaker, "ss")
    assert state(breaker) == "closed"
    await breaker.call(slow)
    assert state(breaker) == "open"
    assert breaker.snapshot()["calls"]["slow"] == 3


async def test_simple_form_consecutive_failures_and_recovery() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        failure_threshold=3,
        wait_duration_in_open_state=10,
        permitted_calls_in_half_open_state=1,
        minimum_number_of_calls=100,
    )
    await drive(breaker, "ffsff")
    assert state(breaker) == "closed"  # the success reset the streak
    await drive(breaker, "f")
    assert state(breaker) == "open"
    clock.advance(9.9)
    with pytest.raises(CircuitBreakerOpen):
        await breaker.call(ok)
    clock.advance(0.2)
    assert state(breaker) == "half_open"
    assert await breaker.call(ok) == "ok"
    assert state(breaker) == "closed"
    snap = breaker.snapshot()
    assert (snap["open"], snap["half_open"], snap["closed"]) == (1, 1, 1)


async def test_failed_trial_reopens() -> None:
    clock = FakeClock()
    breaker = make(
        clock, failure_threshold=1, wait_duration_in_open_state=5, permitted_calls_in_half_open_state=2
    )
    await drive(breaker, "f")
    clock.advance(5)
    await drive(breaker, "s")
    assert state(breaker) == "half_open"
    await drive(breaker, "f")  # 1 of 2 trials failed = 50 % ≥ threshold
    assert state(breaker) == "open"
    assert breaker.snapshot()["open"] == 2


async def test_hundred_concurrent_half_open_calls_reach_upstream_exactly_permitted_times() -> None:
    clock = FakeClock()
    permitted = 5
    breaker = make(
        clock,
        failure_threshold=1,
        wait_duration_in_open_state=1,
        permitted_calls_in_half_open_state=permitted,
    )
    await drive(breaker, "f")
    clock.advance(1)
    reached = 0
    release = asyncio.Event()

    async def upstream() -> str:
        nonlocal reached
        reached += 1
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(breaker.call(upstream)) for _ in range(100)]
    await asyncio.sleep(0.01)
    assert reached == permitted
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r == "ok" for r in results) == permitted
    rejected = [r for r in results if isinstance(r, CircuitBreakerOpen)]
    assert len(rejected) == 100 - permitted
    assert all(r.state == "half_open" for r in rejected)
    assert state(breaker) == "closed"


async def test_cancelled_trial_call_gives_its_slot_back() -> None:
    clock = FakeClock()
    breaker = make(
        clock, failure_threshold=1, wait_duration_in_open_state=1, permitted_calls_in_half_open_state=1
    )
    await drive(breaker, "f")
    clock.advance(1)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 10))
    await asyncio.sleep(0)
    with pytest.raises(CircuitBreakerOpen):
        await breaker.call(ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await breaker.call(ok) == "ok"
    assert state(breaker) == "closed"


async def test_calls_started_before_opening_do_not_count_as_trials() -> None:
    clock = FakeClock()
    breaker = make(
        clock, failure_threshold=1, wait_duration_in_open_state=1, permitted_calls_in_half_open_state=1
    )
    straggler = breaker.acquire()
    await drive(breaker, "f")
    clock.advance(1)
    trial = breaker.acquire()
    straggler.success()  # finished late: must not close the breaker
    assert state(breaker) == "half_open"
    trial.success()
    assert state(breaker) == "closed"


async def test_max_wait_in_half_open_reopens() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        failure_threshold=1,
        wait_duration_in_open_state=1,
        permitted_calls_in_half_open_state=1,
        max_wait_duration_in_half_open_state=3,
    )
    await drive(breaker, "f")
    clock.advance(1)
    breaker.acquire()  # a trial that never reports
    clock.advance(3)
    assert state(breaker) == "open"


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://upstream/x")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(code, request=request))


async def test_classification_4xx_success_5xx_timeout_failure_ignored() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        failure_threshold=100,
        sliding_window_size=100,
        minimum_number_of_calls=100,
        ignore_exceptions=["shared.errors.ApiError"],
    )
    c = breaker.classifier
    assert c.exception(_status_error(404)) == "success"
    assert c.exception(_status_error(503)) == "failure"
    assert c.exception(TimeoutError()) == "failure"
    assert c.exception(httpx.ConnectError("no")) == "failure"
    assert c.exception(ValueError("bug")) == "success"
    assert c.exception(ApiError(400, "bad")) == "ignored"
    assert c.result(httpx.Response(502)) == "failure"
    assert c.result(httpx.Response(409)) == "success"
    strict = make(clock, record_other_exceptions=True, record_timeouts=False)
    assert strict.classifier.exception(ValueError("bug")) == "failure"
    assert strict.classifier.exception(TimeoutError()) == "success"


async def test_errors_caused_by_the_input_never_count_even_when_strict() -> None:
    """What one client sent (a message too large, a value the driver cannot encode, a method
    the upstream does not implement) says nothing about the dependency's health."""
    import asyncpg
    from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

    from shared.breaker import CausedByInput

    class Refused(CausedByInput):
        pass

    strict = make(FakeClock(), record_other_exceptions=True, failure_threshold=1).classifier
    for exc in (
        MessageSizeTooLargeError(),
        RecordTooLargeError(),
        asyncpg.DataError("invalid input for query argument $1"),
        Refused("too big"),
    ):
        assert strict.exception(exc) == "success", exc
    assert strict.exception(asyncpg.InterfaceError("connection is closed")) == "failure"
    for code in (501, 505):
        assert strict.result(httpx.Response(code)) == "success"
        assert strict.exception(_status_error(code)) == "success"
    assert strict.result(httpx.Response(500)) == "failure"


async def test_returned_5xx_response_counts_as_failure() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2)

    async def upstream() -> httpx.Response:
        return httpx.Response(500)

    await breaker.call(upstream)
    await breaker.call(upstream)
    assert state(breaker) == "open"


async def test_call_timeout_cuts_off_and_counts() -> None:
    breaker = CircuitBreaker(f"t_{unique_suffix()}", BreakerConfig(call_timeout=0.01, failure_threshold=1))
    with pytest.raises(TimeoutError):
        await breaker.call(asyncio.sleep, 1)
    assert state(breaker) == "open"


async def test_metrics_follow_transitions_and_outcomes() -> None:
    clock = FakeClock()
    breaker = make(
        clock, failure_threshold=1, wait_duration_in_open_state=1, permitted_calls_in_half_open_state=1
    )

    def value(metric: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(metric, {"name": breaker.name, **labels}) or 0.0

    assert value("circuit_breaker_state") == 0
    await drive(breaker, "f")
    assert value("circuit_breaker_state") == 2
    assert value("circuit_breaker_state_transitions_total", state="open") == 1
    with pytest.raises(CircuitBreakerOpen):
        await breaker.call(ok)
    assert value("circuit_breaker_calls_total", outcome="rejected") == 1
    assert value("circuit_breaker_calls_total", outcome="failure") == 1
    clock.advance(1)
    assert state(breaker) == "half_open"
    assert value("circuit_breaker_state") == 1
    await drive(breaker, "s")
    assert value("circuit_breaker_state") == 0
    assert value("circuit_breaker_state_transitions_total", state="closed") == 1
    assert value("circuit_breaker_calls_total", outcome="success") == 1


async def test_guard_context_manager_records() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1)
    async with breaker.guard():
        pass
    with pytest.raises(OSError, match="down"):
        async with breaker.guard():
            raise OSError("down")
    assert state(breaker) == "open"


def test_snapshot_has_reference_shape_and_config() -> None:
    breaker = CircuitBreaker(f"t_{unique_suffix()}")
    snap = breaker.snapshot()
    for key in (
        "state",
        "open",
        "half_open",
        "closed",
        "failure_rate",
        "slow_call_rate",
        "calls_in_window",
        "opened_at",
        "config",
    ):
        assert key in snap
    assert snap["config"]["permitted_calls_in_half_open_state"] == 3


def test_repository_breaker_file_is_valid(tmp_path: Path) -> None:
    from shared.breaker import BreakerRegistry

    registry = BreakerRegistry.from_yaml(
        Path(__file__).resolve().parents[4] / "config" / "circuit-breakers.yaml"
    )
    for name in ("analytics", "database", "redis", "kafka", "event_processor", "external_api"):
        assert name in registry
