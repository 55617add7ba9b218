"""The Prometheus configuration and alert rules, checked and unit-tested by the real `promtool`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.settings import REPO_ROOT
from tools.dev.servers import unavailable

PROMETHEUS_DIR = REPO_ROOT / "monitoring" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "fleet-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "fleet-alerts.test.yml"

EXPECTED_ALERTS = {
    "ServiceDown",
    "HighHttpErrorRatio",
    "CircuitBreakerOpen",
    "CircuitBreakerFlapping",
    "EventProcessorFailures",
    "EventStorageFailing",
    "EventProcessorStalled",
    "EventLatencyP99High",
    "ReplicationBacklog",
    "ReplicationBacklogCritical",
    "RollupsBehind",
    "CacheHitRatioLow",
    "EventConsumerLagHigh",
    "DeadLettersGrowing",
    "HttpLatencyHigh",
    "PerformanceThresholdFailing",
    "PostgresDown",
    "RedisDown",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        unavailable("promtool (Debian package `prometheus`)")
    assert path
    return path


def _run(promtool: str, *args: str | Path, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_configuration_and_its_rule_files(promtool: str) -> None:
    result = _run(promtool, "check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    # check config also loads the rule files it names; make sure it found ours.
    assert "fleet-alerts.yml" in result.stdout + result.stderr


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests(promtool: str) -> None:
    result = _run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    firing = {
        case["alertname"]
        for test in document["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in document["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    alerts = {str(rule["alert"]) for rule in _rules() if "alert" in rule}
    assert alerts == EXPECTED_ALERTS
    assert firing == alerts, f"alerts never expected to fire: {alerts - firing}"
    assert quiet == alerts, f"alerts never expected to stay quiet: {alerts - quiet}"


def test_every_alert_has_severity_summary_and_a_runbook_entry() -> None:
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    anchors = {m.lower() for m in re.findall(r"^#+\s+`?([A-Za-z0-9]+)`?\s*$", operations, re.MULTILINE)}
    for rule in _rules():
        if "alert" not in rule:
            continue
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict)
        assert isinstance(annotations, dict)
        assert labels["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        anchor = str(annotations["runbook_url"]).split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no heading for #{anchor}"


def test_rules_use_only_metric_names_the_fleet_exports() -> None:
    known = {
        "up",
        "http_requests_total",
        "circuit_breaker_state",
        "circuit_breaker_state_transitions_total",
        "event_processor_events_processed_total",
        "event_processor_events_duplicate_total",
        "event_processor_events_failed_total",
        "event_processor_latency_seconds_bucket",
        "event_processor_paused",
        "replication_backlog_seconds",
        "rollup_backlog_seconds",
        "cache_hits_total",
        "cache_misses_total",
        "event_processor_consumer_lag_seconds",
        "event_processor_dead_lettered_total",
        "http_request_duration_highr_seconds_bucket",
        "performance_threshold_failing",
        "pg_up",
        "redis_up",
    }
    recorded = {str(rule["record"]) for rule in _rules() if "record" in rule}
    keywords = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool"}
    for rule in _rules():
        expr = str(rule["expr"])
        # Drop label matchers, range selectors and grouping clauses; what is left that is not
        # followed by "(" (a function call) is a metric or recorded series name.
        expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(by|without)\s*\([^)]*\)", " ", expr)
        names = (
            {
                m.group(1)
                for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)", expr)
                if not re.match(r"\s*\(", expr[m.end() :])
            }
            - keywords
            - recorded
        )
        assert names <= known, f"{rule.get('alert') or rule.get('record')}: unknown names {names - known}"
    # replication_lag_seconds grows on an idle system by definition: it must not be alerted on.
    assert "replication_lag_seconds" not in RULES.read_text().split("groups:", 1)[1].replace(
        "unlike replication_lag_seconds", ""
    )


def test_a_backlog_alert_built_on_the_lag_gauge_would_fail_the_unit_tests(
    promtool: str, tmp_path: Path
) -> None:
    """The unit tests are strict enough to catch the original system's mistake."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(
        "max by (job, instance) (replication_backlog_seconds) > 300",
        "max by (job, instance) (replication_lag_seconds) > 300",
    )
    assert broken != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = _run(promtool, "test", "rules", tmp_path / "tests" / RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "ReplicationBacklog" in result.stdout + result.stderr


def test_scrape_config_covers_every_service_on_its_reference_port() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static = {
        name: [t for group in jobs[name]["static_configs"] for t in group["targets"]]
        for name in ("gateway", "analytics", "optimizer", "replicator")
    }
    assert static == {
        "gateway": ["gateway:8080"],
        "analytics": ["analytics:8001"],
        "optimizer": ["optimizer:8003"],
        "replicator": ["replicator:8004"],
    }
    processor = jobs["event-processor"]["dns_sd_configs"][0]
    assert processor["names"] == ["event-processor"]
    assert processor["port"] == 8002
    assert config["rule_files"] == ["rules/*.yml"]
    exporters = {
        name: [t for group in jobs[name]["static_configs"] for t in group["targets"]]
        for name in ("postgres", "redis")
    }
    assert exporters == {"postgres": ["postgres-exporter:9187"], "redis": ["redis-exporter:9121"]}
    managers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert managers == ["alertmanager:9093"]


def test_alertmanager_config_is_accepted_and_inhibits_latency_alerts_of_a_down_service() -> None:
    amtool = shutil.which("amtool")
    config_file = REPO_ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
    if not amtool:
        unavailable("amtool (Debian package `prometheus-alertmanager`)")
    assert amtool
    result = subprocess.run(
        [amtool, "check-config", str(config_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(config_file.read_text())
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="ServiceDown"']
    assert inhibit["target_matchers"] == ['kind="latency"']
    assert inhibit["equal"] == ["job"]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert any("slack_configs" in r for r in receivers.values())
    assert any("email_configs" in r for r in receivers.values())
    latency = {str(r["alert"]) for r in _rules() if "alert" in r and r["labels"].get("kind") == "latency"}
    assert {"EventLatencyP99High", "HttpLatencyHigh"} <= latency
    for rule in _rules():
        if "alert" in rule:
            assert str(rule["annotations"]["runbook_url"]).startswith("docs/operations.md#"), rule["alert"]
