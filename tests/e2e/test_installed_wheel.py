"""The fleet as a wheel installs it: not editable, in a fresh virtual environment, run from an
empty directory with the compose file's settings. Every file a service reads at run time (route
table, breaker and monitoring config, dashboard files, migrations) must come from the package;
a file left out of the wheel fails here, as it would in the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import REPO_ROOT
from tests.factories import event_dict
from tools.dev.embedded import free_port
from tools.dev.fleet import ServiceProcess

pytestmark = pytest.mark.e2e

UV = Path(sys.executable).parent / "uv"
COMPOSE = Path(sys.executable).parent / "docker-compose"
SERVICES = {
    "services.analytics": ("analytics", "ANALYTICS_URL"),
    "services.gateway": ("gateway", "GATEWAY_URL"),
    "services.gateway.event_processor": ("event-processor", "EVENT_PROCESSOR_URL"),
    "services.optimizer": ("optimizer", "OPTIMIZER_URL"),
    "services.replicator": ("replicator", "REPLICATOR_URL"),
}
SECRETS = {
    "POSTGRES_PASSWORD": "unused-here",
    "REDIS_PASSWORD": "unused-here",
    "ADMIN_TOKEN": "installed-wheel-admin",
    "API_KEYS": "installed-wheel-key",
    "GRAFANA_ADMIN_PASSWORD": "unused-here",
}


def _run(*args: str | Path, timeout_s: float = 180, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, check=False, **kwargs
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh virtual environment holding the built wheel and the runtime set
    of uv.lock, as the image installs them (no dev group, no laptop extra)."""
    root = tmp_path_factory.mktemp("installed")
    _run(UV, "build", "--wheel", "--quiet", "--out-dir", root / "dist", REPO_ROOT)
    (wheel,) = (root / "dist").glob("sentinel_fleet-*.whl")
    runtime = root / "runtime.txt"
    _run(
        UV, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--quiet",
        "--output-file", runtime, cwd=REPO_ROOT,
    )  # fmt: skip
    _run(UV, "venv", "--quiet", "--python", sys.executable, root / "venv")
    python = root / "venv" / "bin" / "python"
    _run(
        UV, "pip", "install", "--quiet", "--python", python, "--no-deps", "-r", runtime, wheel, timeout_s=600
    )
    _run(UV, "pip", "check", "--python", python)
    return python


@pytest.fixture(scope="module")
def compose_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Each fleet service's environment as the compose file resolves it."""
    env_file = tmp_path_factory.mktemp("compose") / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    result = _run(
        COMPOSE, "-f", REPO_ROOT / "docker-compose.yml", "--env-file", env_file, "--profile", "scale",
        "config", "--format", "json",
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
    )  # fmt: skip
    services = json.loads(result.stdout)["services"]
    return {
        name: {k: v for k, v in services[name]["environment"].items() if v is not None}
        for name, _ in SERVICES.values()
    }


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[[ServiceProcess], ServiceProcess]]:
    processes: list[ServiceProcess] = []

    def start(process: ServiceProcess) -> ServiceProcess:
        processes.append(process)
        return process.start(wait_ready=True, timeout_s=60)

    yield start
    for process in reversed(processes):
        process.stop()


def test_the_installed_package_runs_every_service_from_an_empty_directory(
    installed: Path,
    compose_environment: dict[str, dict[str, str]],
    make_database: Callable[..., str],
    kafka_bootstrap: str,
    redis_url: str,
    topic_name: str,
    empty_dir: Path,
    tmp_path: Path,
    started: Callable[[ServiceProcess], ServiceProcess],
) -> None:
    probe = _run(
        installed, "-c", "import shared, services; print(shared.__file__, services.__file__)", cwd=empty_dir
    )
    assert str(REPO_ROOT) not in probe.stdout, "the fresh environment must not import the checkout"

    ports = {module: free_port() for module in SERVICES}
    redis_host, redis_port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    primary = make_database("primary", migrate=False)
    replica = make_database("replica", migrate=False)
    # Only the addresses of the servers and the services change; every other setting, and the
    # absence of any config-file path, is the compose file's.
    local = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HOST": "127.0.0.1",
        "DATABASE_URL": primary,
        "TIMESCALE_URL": replica,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ACCESS_EVENTS_TOPIC": topic_name,
        "ACCESS_EVENTS_DLQ_TOPIC": topic_name + ".dlq",
        "EVENT_PROCESSOR_GROUP_ID": topic_name + "-processor",
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "CACHE_HOST": redis_host,
        "CACHE_PORT": redis_port,
        "CACHE_KEY_PREFIX": topic_name,
        "CACHE_L3_PATH": str(tmp_path / "cache"),
        "UPLOAD_SPOOL_DIR": str(tmp_path / "spool"),
        "TRACING_ENABLED": "false",
        **{url: f"http://127.0.0.1:{ports[module]}" for module, (_, url) in SERVICES.items()},
    }
    (tmp_path / "spool").mkdir()

    def env_of(service: str) -> dict[str, str]:
        env = {**compose_environment[service], **local}
        env.pop("CACHE_PASSWORD", None)  # the test's Redis has none
        for setting in ("CIRCUIT_BREAKER_CONFIG", "MONITORING_CONFIG", "GATEWAY_ROUTES_CONFIG"):
            assert setting not in env, f"{service}: the compose file must rely on the packaged {setting}"
        return env

    # A missing monitoring file would fall back to built-in defaults silently: check that every
    # default path names a file of the installed package.
    paths = _run(
        installed, "-c",
        "from services.gateway.settings import GatewaySettings as S; s = S();"
        "print(s.routes_config, s.circuit_breaker_config, s.monitoring_config, sep='\\n')",
        cwd=empty_dir, env=env_of("gateway"),
    ).stdout.split()  # fmt: skip
    site_packages = installed.parent.parent / "lib"
    for path in map(Path, paths):
        assert path.is_file(), path
        assert path.is_relative_to(site_packages), path
        assert path.read_bytes() == (REPO_ROOT / "config" / path.name).read_bytes()

    migrate = _run(installed, "-m", "shared.migrate", cwd=empty_dir, env=env_of("gateway"), timeout_s=120)
    assert "primary" in migrate.stdout + migrate.stderr

    processes = {}
    for module, (service, _) in SERVICES.items():
        process = ServiceProcess(
            module,
            env_of(service),
            tmp_path,
            ports[module],
            python=str(installed),
            cwd=empty_dir,
            inherit_env=False,
        )
        processes[module] = started(process)
    assert sorted(p.name for p in empty_dir.iterdir()) == [], "a service wrote into its working directory"

    gateway = processes["services.gateway"].url
    with httpx.Client(timeout=10) as http:
        # The route table: proxied to analytics. The breaker config: the named breakers exist.
        assert http.get(f"{gateway}/api/v1/analytics/summary").status_code == 200
        breakers = http.get(f"{gateway}/breaker").json()
        assert {"analytics", "kafka"} <= set(breakers)
        # The dashboard's page and static files.
        assert http.get(f"{gateway}/dashboard/performance").status_code == 200
        script = http.get(f"{gateway}/dashboard/static/performance.js")
        assert script.status_code == 200
        assert script.content == (REPO_ROOT / "services/gateway/static/performance.js").read_bytes()
        # The compose file's key is required, and ingestion works end to end.
        event = event_dict()
        assert http.post(f"{gateway}/api/v1/events", json=[event]).status_code == 401
        accepted = http.post(
            f"{gateway}/api/v1/events", json=[event], headers={"X-API-Key": SECRETS["API_KEYS"]}
        )
        assert accepted.status_code == 202, accepted.text
        # The monitoring config: analytics serves the thresholds it loaded.
        summary = http.get(f"{processes['services.analytics'].url}/api/v1/performance/summary")
        assert summary.status_code == 200
    for module in SERVICES:
        check = subprocess.run(
            [str(installed), "-m", "shared.healthcheck", str(ports[module])],
            cwd=empty_dir, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert check.returncode == 0, (module, check.stderr)
