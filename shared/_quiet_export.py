"""A span exporter wrapper that is quiet about an absent collector.

Without it, every failed export of the batch processor logs an ERROR with a traceback (one every
five seconds per process while no Jaeger listens). Here the first failure logs one WARNING, later
failures are silent and back off (exports are skipped, spans dropped, for a doubling wait up to
BACKOFF_MAX_S), and the first success after an outage logs that the collector is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("shared.tracing")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0


class QuietExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, name: str, clock: object = time.monotonic) -> None:
        self.inner = inner
        self.name = name
        self._clock = clock if callable(clock) else time.monotonic
        self._lock = threading.Lock()
        self._failing = False
        self._backoff_s = BACKOFF_START_S
        self._retry_at = 0.0
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        now = float(self._clock())
        with self._lock:
            if self._failing and now < self._retry_at:
                self.dropped += len(spans)
                return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
            error: str | None = None if result == SpanExportResult.SUCCESS else "export refused"
        except Exception as exc:  # the exporter raises on connection errors
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if error is None:
                if self._failing:
                    log.info(
                        "trace collector %s reachable again (%d spans dropped meanwhile)",
                        self.name,
                        self.dropped,
                    )
                self._failing, self._backoff_s, self.dropped = False, BACKOFF_START_S, 0
                return SpanExportResult.SUCCESS
            if not self._failing:
                log.warning(
                    "trace collector %s unavailable (%s); spans are dropped and the export retried "
                    "quietly with backoff up to %.0f s",
                    self.name,
                    error[:300],
                    BACKOFF_MAX_S,
                )
            self._failing = True
            self.dropped += len(spans)
            self._retry_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
