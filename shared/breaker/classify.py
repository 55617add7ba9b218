"""What counts as a failure for a breaker: timeouts, connection errors and server errors (5xx).

A breaker guards one dependency, so it counts only that dependency's faults, never the
consequence of one client's input: a client error (4xx, a constraint violation, a bad query,
a value the driver cannot encode, a Kafka message refused for its size) proves the dependency
answered, so it counts as a success even though the call raised; the exception still reaches
the caller. Configured `ignore_exceptions` count as neither, `record_exceptions` always as
failures.
"""

from __future__ import annotations

from typing import Literal

import aiohttp
import asyncpg
import httpx
import redis.exceptions
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from shared.breaker.config import BreakerConfig, resolve_exception
from shared.breaker.errors import CausedByInput, CircuitBreakerOpen

Verdict = Literal["success", "failure", "ignored"]

# Errors a call raises because of what it was given, not because the dependency failed. Checked
# first: asyncpg's DataError is an InterfaceError, which otherwise reads as a connection fault.
MESSAGE_CAUSED: tuple[type[BaseException], ...] = (
    CausedByInput,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    asyncpg.DataError,
)
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
    aiohttp.ClientConnectionError,  # refused, reset, closed before answering
    aiohttp.ClientPayloadError,  # an answer that broke off
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
        if isinstance(exc, MESSAGE_CAUSED):
            return "success"
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
            return "failure" if is_server_fault(code) and config.record_server_errors else "success"
        return "failure" if config.record_other_exceptions else "success"

    def result(self, value: object) -> Verdict:
        """A returned HTTP response with a 5xx status is a failure even though nothing raised."""
        if isinstance(value, httpx.Response):
            status = value.status_code
        elif isinstance(value, aiohttp.ClientResponse):
            status = value.status
        else:
            return "success"
        if is_server_fault(status) and self.config.record_server_errors:
            return "failure"
        return "success"


# 5xx answers that describe the request, not the server's health: 501 (the method or feature
# is not implemented), 505 (the HTTP version), 511 (the client must authenticate to a network).
_REQUEST_CAUSED_5XX = frozenset({501, 505, 511})


def is_server_fault(status: int) -> bool:
    """Whether an HTTP status says the upstream is failing (and so counts for its breaker)."""
    return status >= 500 and status not in _REQUEST_CAUSED_5XX
