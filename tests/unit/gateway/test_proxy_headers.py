"""Headers the proxy sends upstream: hop-by-hop removed, X-Forwarded-*, request id, trace context."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.requests import Request

from services.gateway.proxy import forward_headers
from shared.request_context import request_id_var

INCOMING_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def make_request(*headers: tuple[bytes, bytes]) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/api/v1/analytics/x",
            "query_string": b"",
            "scheme": "http",
            "headers": [(b"host", b"gateway:8080"), *headers],
            "client": ("10.0.0.7", 5555),
            "server": ("gw", 8080),
        }
    )


def as_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.decode(), []).append(value.decode())
    return out


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    token = request_id_var.set("rid-1")
    try:
        headers = as_dict(
            forward_headers(
                make_request(
                    (b"connection", b"keep-alive, x-private"),
                    (b"x-private", b"1"),
                    (b"keep-alive", b"timeout=5"),
                    (b"transfer-encoding", b"chunked"),
                    (b"upgrade", b"websocket"),
                    (b"x-forwarded-for", b"1.2.3.4"),
                    (b"x-request-id", b"client-given"),
                    (b"accept", b"application/json"),
                )
            )
        )
    finally:
        request_id_var.reset(token)
    for dropped in ("connection", "x-private", "keep-alive", "transfer-encoding", "upgrade", "host"):
        assert dropped not in headers
    assert headers["accept"] == ["application/json"]
    assert headers["x-forwarded-for"] == ["1.2.3.4, 10.0.0.7"]
    assert headers["x-forwarded-host"] == ["gateway:8080"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-request-id"] == ["rid-1"]  # the id the gateway logs under, once


def test_untraced_request_passes_the_callers_trace_context_through() -> None:
    headers = as_dict(forward_headers(make_request((b"traceparent", INCOMING_TRACE.encode()))))
    assert headers["traceparent"] == [INCOMING_TRACE]


def test_traced_request_sends_a_child_of_the_gateway_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("gateway") as span:
        headers = as_dict(forward_headers(make_request((b"traceparent", INCOMING_TRACE.encode()))))
        context = span.get_span_context()
    assert len(headers["traceparent"]) == 1
    _, trace_id, span_id, _ = headers["traceparent"][0].split("-")
    assert trace_id == format(context.trace_id, "032x")
    assert span_id == format(context.span_id, "016x")
    assert trace.get_current_span() is not span
