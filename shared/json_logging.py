"""JSON logging: one line per record with time, level, service, message, trace and request ids."""

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


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (uvicorn's included) to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(FleetJsonFormatter(service))
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
