"""Property-based fuzzing of every service's HTTP API with schemathesis, against real processes.

Each service runs as `python -m services.<name>` with tracing on (as in production), on a real
PostgreSQL and Kafka, with ADMIN_TOKEN and API_KEYS set so that admin and write operations are
fuzzed past their guards. Schemathesis reads the service's own `/openapi.json`, generates valid
and invalid requests (plus undeclared methods and missing headers), and checks every answer:
no 5xx, status codes, content types, headers and bodies as documented. The run is bounded in
examples per operation and in time, and uses a fixed seed so a failure replays.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess, service_env

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "fuzz-admin-token"
API_KEY = "fuzz-api-key"
SEED = 20261130
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
RUN_TIMEOUT_S = 240.0
# Every check of schemathesis that applies to a stateless API. Left out: `use_after_free` and
# `ensure_resource_availability` (they need create/delete pairs, which this API has not), and
# `positive_data_acceptance`, because a request valid by the schema may still be refused for a
# reason a schema cannot state (a file with no rows, a rate limit, an unknown breaker name).
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    ]
)


@dataclass
class FuzzFleet:
    services: dict[str, ServiceProcess]
    report_dir: Path


@pytest.fixture(scope="module")
def fuzz_fleet(
    make_database: Callable[..., str],
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FuzzFleet]:
    log_dir = tmp_path_factory.mktemp("fuzz")
    topic = f"access-events-fuzz-{os.getpid()}-{int(time.time())}"
    env = {
        **service_env(make_database("primary"), kafka_bootstrap, topic),
        "TIMESCALE_URL": make_database("replica"),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "API_KEYS": API_KEY,
        # Tracing on, as deployed; spans go to a port nobody listens on and are dropped there.
        "TRACING_ENABLED": "true",
        "JAEGER_ENDPOINT": f"http://127.0.0.1:{free_port()}/api/traces",
        "ANALYTICS_MAX_WORKERS": "1",
        "GATEWAY_RUN_EVENT_PROCESSOR": "false",
        "OPTIMIZER_ENABLED": "false",
    }
    started: list[ServiceProcess] = []

    def start(module: str, extra: dict[str, str] | None = None) -> ServiceProcess:
        service = ServiceProcess(module, {**env, **(extra or {})}, log_dir)
        started.append(service)
        return service.start(wait_ready=True, timeout_s=60)

    try:
        analytics = start("services.analytics")
        replicator = start("services.replicator")
        processor = start("services.gateway.event_processor")
        optimizer = start(
            "services.optimizer",
            {
                "ANALYTICS_URL": analytics.url,
                "REPLICATOR_URL": replicator.url,
                "EVENT_PROCESSOR_URL": processor.url,
            },
        )
        gateway = start(
            "services.gateway",
            {
                "ANALYTICS_URL": analytics.url,
                "OPTIMIZER_URL": optimizer.url,
                "REPLICATOR_URL": replicator.url,
                "EVENT_PROCESSOR_URL": processor.url,
            },
        )
        yield FuzzFleet(
            services={
                "gateway": gateway,
                "event_processor": processor,
                "analytics": analytics,
                "optimizer": optimizer,
                "replicator": replicator,
            },
            report_dir=log_dir,
        )
    finally:
        for service in reversed(started):
            service.stop()


def run_schemathesis(service: ServiceProcess, report: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--header",
        f"Authorization: Bearer {ADMIN_TOKEN}",
        "--header",
        f"X-API-Key: {API_KEY}",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--no-color",
    ]
    started = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        cwd=report.parent,  # schemathesis keeps its replay cache in the working directory
    )
    return result, time.monotonic() - started


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", ["gateway", "event_processor", "analytics", "optimizer", "replicator"])
def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzz_fleet: FuzzFleet, name: str) -> None:
    service = fuzz_fleet.services[name]
    result, elapsed = run_schemathesis(service, fuzz_fleet.report_dir / f"{name}.xml")
    cases = re.search(r"(\d+) generated", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    print(
        f"fuzz {name}: {cases.group(1) if cases else '?'} cases over "
        f"{tested.group(1) if tested else '?'} operations in {elapsed:.1f}s"
    )
    assert result.returncode == 0, f"{result.stdout[-20000:]}\n{result.stderr[-3000:]}\n{service.logs(40)}"
    assert cases is not None, result.stdout[-3000:]
    assert int(cases.group(1)) > 0
    assert tested is not None, result.stdout[-3000:]
    assert int(tested.group(1)) > 0
