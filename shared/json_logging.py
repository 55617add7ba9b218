"""Logging: JSON lines (time, level, service, message, trace and request ids) or readable console lines.

JSON is what log shippers read and stays the default whenever output is not a terminal;
`LOG_FORMAT=console` (or `auto` on a terminal) prints `time level logger: message` instead.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from shared.request_context import current_request_id


class FleetJsonFormatter(JsonFormatter):
    """Adds the fields every log line of the fleet carries, so Logstash can join them to traces."""

    def __init__(self, service: str) -> None:
        super().__init__(timestamp=False)
        self.service = service

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname
        log_data["service"] = self.service
        log_data["logger"] = record.name
        log_data.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            log_data["trace_id"] = format(span_context.trace_id, "032x")
            log_data["span_id"] = format(span_context.span_id, "016x")
        else:
            log_data["trace_id"] = None
            log_data["span_id"] = None
        log_data["request_id"] = current_request_id()
        # Reorder so the message follows the envelope fields for readability.
        log_data["message"] = log_data.pop("message", record.getMessage())


class ConsoleFormatter(logging.Formatter):
    """One readable line per record, for a person at a terminal; the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = current_request_id()
        return f"{line} [request {request_id}]" if request_id else line


def wants_console(log_format: str, stream: Any = None) -> bool:
    """`console`, or `auto` when the stream is a terminal."""
    if log_format == "auto":
        stream = stream if stream is not None else sys.stdout
        return bool(getattr(stream, "isatty", lambda: False)())
    return log_format == "console"


def configure_logging(service: str, level: str = "INFO", log_format: str = "auto") -> None:
    """Route every logger (uvicorn's included) to stdout, as JSON lines or console lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ConsoleFormatter() if wants_console(log_format) else FleetJsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    # The access log duplicates what the metrics and traces already record.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
