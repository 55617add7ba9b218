"""What counts as a failure for a breaker: timeouts, connection errors and server errors (5xx).

A client error (4xx, a constraint violation, a bad query) proves the dependency answered, so
it counts as a success for the breaker even though the call raised; the exception still
reaches the caller. Configured `ignore_exceptions` count as neither, `record_exceptions` always
as failures.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
import httpx
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from shared.breaker.config import BreakerConfig, resolve_exception
from shared.breaker.errors import CircuitBreakerOpen

Verdict = Literal["success", "failure", "ignored"]

TIMEOUTS: tuple[type[BaseException], ...] = (
    TimeoutError,
    httpx.TimeoutException,
    redis.exceptions.TimeoutError,
    KafkaTimeoutError,
    asyncpg.QueryCanceledError,
)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    httpx.TransportError,
    redis.exceptions.ConnectionError,
    KafkaConnectionError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
)
# SQLSTATE classes that mean "the server cannot serve", not "your request was wrong":
# 08 connection exception, 53 insufficient resources, 57 operator intervention, 58 system error,
# XX internal error.
_SERVER_SQLSTATE_CLASSES = ("08", "53", "57", "58", "XX")


def status_code_of(exc: BaseException) -> int | None:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


class Classifier:
    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._record = tuple(resolve_exception(n) for n in config.record_exceptions)
        self._ignore = tuple(resolve_exception(n) for n in config.ignore_exceptions)

    def exception(self, exc: BaseException) -> Verdict:
        config = self.config
        if self._ignore and isinstance(exc, self._ignore):
            return "ignored"
        if self._record and isinstance(exc, self._record):
            return "failure"
        if isinstance(exc, TIMEOUTS):
            return "failure" if config.record_timeouts else "success"
        if isinstance(exc, CONNECTION_ERRORS):
            return "failure" if config.record_connection_errors else "success"
        if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
            # Leader elections, unavailable replicas...: the broker cannot serve right now.
            return "failure" if config.record_connection_errors else "success"
        if isinstance(exc, asyncpg.PostgresError):
            sqlstate = str(getattr(exc, "sqlstate", "") or "")
            if sqlstate.startswith(_SERVER_SQLSTATE_CLASSES):
                return "failure" if config.record_server_errors else "success"
            return "success"
        if isinstance(exc, CircuitBreakerOpen):
            # A breaker further down is open: this dependency is unavailable too.
            return "failure"
        code = status_code_of(exc)
        if code is not None:
            return "failure" if code >= 500 and config.record_server_errors else "success"
        return "failure" if config.record_other_exceptions else "success"

    def result(self, value: object) -> Verdict:
        """A returned HTTP response with a 5xx status is a failure even though nothing raised."""
        if (
            isinstance(value, httpx.Response)
            and value.status_code >= 500
            and self.config.record_server_errors
        ):
            return "failure"
        return "success"
