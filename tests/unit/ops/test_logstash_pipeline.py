"""logging/logstash: the pipeline parses, and reads only fields the fleet's log lines carry."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import yaml

from shared.json_logging import FleetJsonFormatter
from shared.settings import REPO_ROOT
from tests.unit.ops._logstash import LogstashSyntaxError, Pipeline, parse_pipeline, referenced_fields

PIPELINE_FILE = REPO_ROOT / "logging" / "logstash" / "pipeline" / "fleet.conf"
SETTINGS_FILE = REPO_ROOT / "logging" / "logstash" / "config" / "logstash.yml"

# The envelope every line of the fleet carries (shared/json_logging.py).
ENVELOPE = {"time", "level", "service", "logger", "message", "trace_id", "span_id", "request_id"}
# Present only on lines that logged an exception.
OPTIONAL = {"exc_info"}


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return parse_pipeline(PIPELINE_FILE.read_text())


def _line(record: logging.LogRecord) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(FleetJsonFormatter("gateway").format(record))
    return parsed


def test_pipeline_has_the_inputs_filters_and_outputs_the_fleet_needs(pipeline: Pipeline) -> None:
    (gelf,) = pipeline.by_name("input", "gelf")
    assert gelf.attributes["port"] == 12201
    (tcp,) = pipeline.by_name("input", "tcp")
    assert tcp.attributes["codec"] == "json_lines"
    assert tcp.attributes["port"] == 5000
    (beats,) = pipeline.by_name("input", "beats")
    assert beats.attributes["port"] == 5044
    (json_filter,) = pipeline.by_name("filter", "json")
    assert json_filter.attributes["source"] == "message"
    (date,) = pipeline.by_name("filter", "date")
    assert date.attributes["match"] == ["time", "ISO8601"]
    assert date.attributes["target"] == "@timestamp"
    (elasticsearch,) = pipeline.by_name("output", "elasticsearch")
    assert "ELASTICSEARCH_HOSTS" in elasticsearch.attributes["hosts"][0]
    assert pipeline.by_name("output", "stdout")
    ids = [p.attributes["id"] for p in pipeline.plugins]
    assert all(ids), "every plugin has an id, so Logstash's monitoring API names it"
    assert len(ids) == len(set(ids))


def test_pipeline_reads_only_fields_the_fleet_writes(pipeline: Pipeline) -> None:
    assert referenced_fields(pipeline) <= ENVELOPE | OPTIONAL
    assert {"time", "level", "service", "message", "trace_id", "request_id"} <= referenced_fields(pipeline)


def test_tags_cover_every_python_level_name(pipeline: Pipeline) -> None:
    tagged_levels: set[str] = set()
    for condition in pipeline.conditions:
        if "[ level ]" in condition:
            tagged_levels.update(part.strip('" ,[]') for part in condition.split() if part.startswith('"'))
    assert tagged_levels == {"ERROR", "CRITICAL", "WARNING", "DEBUG"}  # INFO is the else branch
    assert tagged_levels <= set(logging.getLevelNamesMapping())
    tags = {tag for p in pipeline.by_name("filter", "mutate") for tag in p.attributes.get("add_tag", [])}
    assert {"error", "warning", "info", "debug", "traced", "unstructured"} <= tags


def test_the_formatter_writes_every_field_the_pipeline_reads(pipeline: Pipeline) -> None:
    record = logging.LogRecord(
        "services.gateway", logging.WARNING, __file__, 1, "breaker %s opened", ("db",), None
    )
    line = _line(record)
    assert set(line) >= ENVELOPE
    assert line["message"] == "breaker db opened"
    assert line["level"] == "WARNING"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord(
            "services.gateway", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    with_exception = _line(failed)
    assert "RuntimeError: boom" in str(with_exception["exc_info"])
    assert referenced_fields(pipeline) <= set(line) | set(with_exception)


def test_parser_rejects_what_logstash_would_reject() -> None:
    for broken in (
        'filter { mutate { add_tag => ["x"] }',  # unclosed section
        'filter { if [level] == "ERROR" mutate { } }',  # condition without a block
        "filters { }",  # no such section
        "output { stdout { codec => } }",  # attribute without a value
        "input { tcp { port => 1 port => 2 } }",  # the same attribute twice
    ):
        with pytest.raises(LogstashSyntaxError):
            parse_pipeline(broken)


def test_logstash_settings_keep_the_fleet_field_names() -> None:
    settings = yaml.safe_load(SETTINGS_FILE.read_text())
    assert settings["pipeline.ecs_compatibility"] == "disabled"
    assert settings["path.config"] == "/usr/share/logstash/pipeline"
    assert settings["http.host"] == "0.0.0.0"
