"""One trace follows the work across processes, asserted on the spans a real exporter sends.

Gateway (with its event processor), analytics and replicator run as processes exporting over
OTLP/HTTP to a local receiver that decodes the protobuf; Jaeger's port is closed (its exporter
stays quiet). Each path's span tree is checked parent by parent:

- `POST /api/v1/events` → Kafka producer span (context in the message headers) → the
  processor's batch span, linked to the message's trace → `processor.store` → the INSERT;
- a proxied analytics call → the gateway's HTTP client span → analytics' server span →
  the cache computation → the named query → SQL;
- an upload through the gateway: parse and validate, COPY;
- a replicator cycle: batch → read, copy, watermark, each with its SQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from tests.e2e.tracing.otlp_receiver import OtlpReceiver, Span, otlp_receiver
from tests.factories import event_dict
from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess, service_env, start_service

__all__ = ["otlp_receiver", "start_service"]

pytestmark = pytest.mark.e2e

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5


def _wait(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {timeout_s} s")


def _one(spans: list[Span], **match: object) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert found, f"no span with {match}; have {sorted({(s.service, s.name) for s in spans})}"
    return found[0]


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]


def _descendant(spans: list[Span], root: Span, name: str) -> Span:
    frontier = [root]
    while frontier:
        node = frontier.pop()
        for child in _children(spans, node):
            if child.name == name:
                return child
            frontier.append(child)
    raise AssertionError(f"no {name!r} under {root.service}/{root.name}")


def _sql_child(spans: list[Span], parent: Span) -> Span:
    sql = [c for c in _children(spans, parent) if c.kind == CLIENT and "db.system" in c.attributes]
    assert sql, f"no database span under {parent.name}: {[c.name for c in _children(spans, parent)]}"
    return sql[0]


def test_each_path_is_one_trace_across_processes(
    otlp_receiver: OtlpReceiver,
    database_url: str,
    replica_url: str,
    kafka_bootstrap: str,
    topic_name: str,
    start_service: Callable[..., ServiceProcess],
) -> None:
    env = {
        **service_env(database_url, kafka_bootstrap, topic_name),
        "TIMESCALE_URL": replica_url,
        "TRACING_ENABLED": "true",
        "JAEGER_ENDPOINT": f"http://127.0.0.1:{free_port()}/api/traces",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "DEPLOYMENT_ENVIRONMENT": "e2e",
        "ANALYTICS_MAX_WORKERS": "1",
        "REPLICATION_INTERVAL": "0.5",
    }
    analytics = start_service("services.analytics", env, wait_ready=True)
    replicator = start_service("services.replicator", env, wait_ready=True)
    urls = {"ANALYTICS_URL": analytics.url, "REPLICATOR_URL": replicator.url}
    gateway = start_service("services.gateway", {**env, **urls}, wait_ready=True)

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        now = datetime.now(UTC).isoformat()
        assert http.post("/api/v1/events", json=event_dict(timestamp=now)).status_code == 202
        assert http.get("/api/v1/analytics/summary").status_code == 200
        csv = "Timestamp,Person ID,Token ID,Device name,Access result\n" + "".join(
            f"{now[:19]},p{i},b{i},d{i % 3},Granted\n" for i in range(30)
        )
        upload = http.post("/api/v1/uploads", files={"file": ("e.csv", csv.encode(), "text/csv")})
        assert upload.status_code == 201, upload.text

    def have(service: str, name: str) -> bool:
        return any(s.service == service and s.name == name for s in otlp_receiver.snapshot())

    _wait(lambda: have("gateway", "processor.store"), 30, "the processor's store span")
    _wait(lambda: have("replicator", "replicator.watermark"), 30, "a replicator cycle")
    _wait(lambda: have("analytics", "upload.copy"), 30, "the upload's COPY span")
    time.sleep(1)  # the last batches of every exporter
    spans = otlp_receiver.snapshot()

    # No span is exported twice (one exporter per destination).
    ids = [(s.trace_id, s.span_id) for s in spans]
    assert len(ids) == len(set(ids))
    resources = {r["service.name"]: r for r in otlp_receiver.resources}
    assert resources["gateway"]["deployment.environment"] == "e2e"
    assert resources["analytics"]["service.version"]

    # 1. Ingestion: request → producer → (headers) → batch linked to it → store → INSERT.
    ingest = _one(spans, service="gateway", name="POST /api/v1/events", kind=SERVER)
    producer = next(
        s for s in spans if s.trace_id == ingest.trace_id and s.kind == PRODUCER and topic_name in s.name
    )
    batches = [s for s in spans if s.name == "processor.batch" and ingest.trace_id in s.links]
    assert batches, "no processor batch links to the ingestion trace"
    batch = batches[0]
    store = _one(_children(spans, batch), name="processor.store")
    query = _one(_children(spans, store), name="db.insert_events")
    _sql_child(spans, query)
    statements = [
        c.attributes["db.statement"].string_value
        for c in _children(spans, query)
        if c.kind == CLIENT and "db.statement" in c.attributes
    ]
    # The batch goes in by COPY (or, redelivered, COPY to staging then INSERT ... ON CONFLICT).
    assert any(s.startswith(("COPY access_events", "INSERT")) for s in statements), statements
    _one(_children(spans, batch), name="processor.commit")
    # The message's own consumer span continues the producer's trace.
    assert any(s.kind == CONSUMER and s.parent_id == producer.span_id for s in spans)

    # 2. Proxied analytics: gateway server → client span → analytics server → cache → query → SQL.
    proxied = next(
        s
        for s in spans
        if s.service == "gateway" and s.kind == SERVER and s.name.startswith("GET /api/v1/analytics")
    )
    client = next(
        s for s in spans if s.trace_id == proxied.trace_id and s.service == "gateway" and s.kind == CLIENT
    )
    served = _one(spans, service="analytics", kind=SERVER, parent_id=client.span_id)
    compute = _descendant(spans, served, "cache.compute.summary")
    summary_query = _descendant(spans, compute, "db.analytics_summary")
    _sql_child(spans, summary_query)

    # 3. Upload: parse and validate, COPY (with its SQL), under the upload's span.
    store_upload = _one(spans, service="analytics", name="upload.store")
    _descendant(spans, store_upload, "upload.parse_validate")
    copy = _descendant(spans, store_upload, "upload.copy")
    _sql_child(spans, _descendant(spans, copy, "db.copy_events_binary"))

    # 4. Replicator: cycle → batch → read, copy, watermark, each with its SQL (a batch that
    # copied rows; an idle cycle's batch reads nothing and moves no watermark).
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    watermark = _one(spans, service="replicator", name="replicator.watermark")
    rep_batch = by_id[(watermark.trace_id, watermark.parent_id)]
    assert rep_batch.name == "replicator.batch"
    assert by_id[(rep_batch.trace_id, rep_batch.parent_id)].name == "replicator.cycle"
    for step in ("replicator.read", "replicator.copy", "replicator.watermark"):
        _sql_child(spans, _descendant(spans, rep_batch, step))
