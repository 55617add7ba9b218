"""Tracing leaves over the real Jaeger Thrift/HTTP and OTLP/HTTP wire formats; logs are JSON lines.

There is no Jaeger here, so a local HTTP receiver decodes exactly what a collector would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.jaeger.thrift.gen.jaeger.ttypes import Batch
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.transport.TTransport import TMemoryBuffer

from shared.settings import REPO_ROOT
from tools.dev.embedded import free_port


class Collector:
    def __init__(self) -> None:
        self.jaeger: list[Batch] = []
        self.otlp: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    received = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.content_types.append(self.headers.get("Content-Type", ""))
            if self.path.startswith("/api/traces"):
                batch = Batch()
                batch.read(TBinaryProtocol(TMemoryBuffer(body)))
                received.jaeger.append(batch)
            elif self.path == "/v1/traces":
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.otlp.append(request)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received, port
    server.shutdown()
    server.server_close()


SCRIPT = textwrap.dedent(
    """
    import logging
    from opentelemetry import trace
    from shared.json_logging import configure_logging
    from shared.request_context import request_id_var
    from shared.tracing import init_tracing
    configure_logging("probe")
    assert init_tracing("probe")
    request_id_var.set("req-42")
    with trace.get_tracer("probe").start_as_current_span("probe-span"):
        logging.getLogger("probe").info("inside a span")
    trace.get_tracer_provider().force_flush(5000)
    """
)


def _run_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_spans_reach_jaeger_and_otlp_and_logs_carry_the_trace(collector: tuple[Collector, int]) -> None:
    received, port = collector
    env = {
        "PATH": "/usr/bin:/bin",
        "JAEGER_ENDPOINT": f"http://127.0.0.1:{port}/api/traces",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "TRACING_ENABLED": "true",
        "DEPLOYMENT_ENVIRONMENT": "staging",
    }
    result = _run_probe(env)

    assert received.jaeger, "no Thrift batch arrived"
    batch = received.jaeger[0]
    assert batch.process.serviceName == "probe"
    assert [span.operationName for span in batch.spans] == ["probe-span"]
    assert received.otlp, "no OTLP request arrived"
    otlp_spans = [s for rs in received.otlp[0].resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in otlp_spans] == ["probe-span"]
    resource = {a.key: a.value.string_value for a in received.otlp[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "probe"
    assert resource["deployment.environment"] == "staging"
    assert resource["service.version"]
    assert "application/x-thrift" in received.content_types

    line = next(json.loads(x) for x in result.stdout.splitlines() if "inside a span" in x)
    assert set(line) >= {"time", "level", "service", "message", "trace_id", "span_id", "request_id"}
    assert line["service"] == "probe"
    assert line["level"] == "INFO"
    assert line["request_id"] == "req-42"
    trace_id = int(line["trace_id"], 16)
    assert trace_id & 0xFFFFFFFFFFFFFFFF == batch.spans[0].traceIdLow & 0xFFFFFFFFFFFFFFFF
    assert line["span_id"] == otlp_spans[0].span_id.hex()


def test_tracing_never_blocks_when_no_collector_listens() -> None:
    closed = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "JAEGER_ENDPOINT": f"http://127.0.0.1:{closed}/api/traces",
        "TRACING_ENABLED": "true",
    }
    started = time.monotonic()
    _run_probe(env)
    # Import, set-up, one span and a flush against a closed port: well under the exporter timeout.
    assert time.monotonic() - started < 15


def test_tracing_can_be_turned_off() -> None:
    script = "import sys; from shared.tracing import init_tracing; sys.exit(init_tracing('x') is not False)"
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "TRACING_ENABLED": "false"},
        check=True,
        timeout=60,
    )


QUIET_SCRIPT = textwrap.dedent(
    """
    from opentelemetry import trace
    from shared.json_logging import configure_logging
    from shared.tracing import init_tracing
    configure_logging("probe")
    assert init_tracing("probe")
    for i in range(6):
        with trace.get_tracer("probe").start_as_current_span(f"span-{i}"):
            pass
        trace.get_tracer_provider().force_flush(5000)
    """
)


def test_an_absent_collector_gets_one_warning_and_no_error_lines() -> None:
    closed = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "JAEGER_ENDPOINT": f"http://127.0.0.1:{closed}/api/traces",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "TRACING_ENABLED": "true",
    }
    result = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    errors = [x for x in lines if x["level"] == "ERROR"]
    warnings = [x for x in lines if x["level"] == "WARNING" and "trace collector" in x["message"]]
    assert errors == [], errors
    assert "Traceback" not in result.stdout + result.stderr
    # One per destination (Jaeger and OTLP), not one per batch.
    assert len(warnings) == 2, [w["message"] for w in warnings]
