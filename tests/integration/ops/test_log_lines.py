"""The log lines of a real service process carry every field the Logstash pipeline reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from shared.settings import REPO_ROOT
from tests.unit.ops._logstash import parse_pipeline, referenced_fields
from tools.dev.fleet import ServiceProcess

pytestmark = pytest.mark.e2e

PIPELINE_FILE = REPO_ROOT / "logging" / "logstash" / "pipeline" / "fleet.conf"
OPTIONAL = {"exc_info"}  # only on lines that logged an exception


def test_service_log_lines_match_the_pipeline(
    database_url: str, replica_url: str, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service(
        "services.replicator", {"DATABASE_URL": database_url, "TIMESCALE_URL": replica_url}, wait_ready=True
    )
    assert (
        httpx.get(service.url + "/ready", headers={"X-Request-ID": "ops-log-check"}, timeout=5).status_code
        == 200
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -15, not 0.
    assert service.stop() in (0, -15)

    lines = [line for line in service.log_path.read_text().splitlines() if line.strip()]
    assert len(lines) >= 3, lines  # start-up and shutdown at least
    records = [json.loads(line) for line in lines]  # every line is one JSON object

    needed = referenced_fields(parse_pipeline(PIPELINE_FILE.read_text())) - OPTIONAL
    assert {"time", "level", "service", "message", "trace_id", "request_id"} <= needed
    for record in records:
        missing = needed - set(record)
        assert not missing, f"log line lacks {missing}: {record}"
        assert set(record) >= {
            "time",
            "level",
            "service",
            "logger",
            "message",
            "trace_id",
            "span_id",
            "request_id",
        }
        # The pipeline's structured branch is `[service] and [level] and [time]`.
        assert record["service"] == "replicator"
        assert record["level"] in logging.getLevelNamesMapping()
        # Logstash's ISO8601 pattern needs a full date-time with an offset.
        stamp = datetime.fromisoformat(record["time"])
        assert stamp.utcoffset() is not None
        assert "T" in record["time"]
