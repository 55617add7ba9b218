"""deploy/k8s: every manifest is valid against the Kubernetes API schemas and wired consistently."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.gateway.settings import GatewaySettings
from shared.settings import DEFAULT_PORTS, REPO_ROOT
from tests.unit.ops._settings import setting_names

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest version the manifests promise to work on
FILES = sorted(K8S_DIR.glob("*.yaml"))

SERVICES = {
    "gateway": ("services.gateway", DEFAULT_PORTS["gateway"]),
    "event-processor": ("services.gateway.event_processor", DEFAULT_PORTS["event_processor"]),
    "analytics": ("services.analytics", DEFAULT_PORTS["analytics"]),
    "optimizer": ("services.optimizer", DEFAULT_PORTS["optimizer"]),
    "replicator": ("services.replicator", DEFAULT_PORTS["replicator"]),
}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_parses_and_matches_the_api_schema(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} is empty"
    for doc in docs:
        if doc["kind"] == "Kustomization":
            continue  # a kustomize file, not an API object
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "sentinel-fleet", doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in FILES if p.name != "kustomization.yaml"
    )
    assert [i["name"] for i in kustomization["images"]] == ["sentinel-fleet"]


def test_each_service_has_a_deployment_with_probes_limits_and_a_service() -> None:
    deployments = of_kind("Deployment")
    services = of_kind("Service")
    assert set(deployments) == set(SERVICES)
    for name, (module, port) in SERVICES.items():
        deployment = deployments[name]
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        assert container["image"] == "sentinel-fleet"
        assert container["command"] == ["python", "-m", module]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, name
        resources = container["resources"]
        assert set(resources["limits"]) == {"cpu", "memory"}, name
        assert set(resources["requests"]) == {"cpu", "memory"}, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["runAsNonRoot"] is True
        # A read-only root needs a writable /tmp.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        service = services[name]
        assert service["spec"]["selector"] == selector
        assert service["spec"]["ports"][0]["port"] == port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)


def test_autoscalers_target_the_gateway_and_analytics() -> None:
    hpas = of_kind("HorizontalPodAutoscaler")
    deployments = of_kind("Deployment")
    assert set(hpas) == {"gateway", "analytics"}
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert hpa["spec"]["minReplicas"] >= 2
        # The autoscaler owns the count; a fixed `replicas` would be reset at every apply.
        assert "replicas" not in deployments[name]["spec"]
        cpu = pod_spec(deployments[name])["containers"][0]["resources"]["requests"]["cpu"]
        assert cpu, "utilisation targets need CPU requests"


def test_migration_job_and_replication_cronjob_run_the_right_commands() -> None:
    (job,) = of_kind("Job").values()
    assert pod_spec(job)["containers"][0]["command"][:3] == ["python", "-m", "shared.migrate"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    (cron,) = of_kind("CronJob").values()
    assert pod_spec(cron)["containers"][0]["command"] == ["python", "-m", "services.replicator", "--once"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    # An alternative to the continuous replicator: created suspended, so both never run at once.
    assert cron["spec"]["suspend"] is True
    for doc in (job, cron):
        container = pod_spec(doc)["containers"][0]
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            for container in pod_spec(doc)["containers"]:
                assert importlib.util.find_spec(container["command"][2]) is not None


def test_configmap_holds_only_settings_the_fleet_reads_and_every_pod_uses_it() -> None:
    (configmap,) = of_kind("ConfigMap").values()
    data = configmap["data"]
    unknown = set(data) - setting_names()
    assert not unknown, f"settings nobody reads: {unknown}"
    assert data["HOST"] == "0.0.0.0"
    for name, (_, port) in SERVICES.items():
        setting = "EVENT_PROCESSOR_URL" if name == "event-processor" else f"{name.upper()}_URL"
        assert data[setting] == f"http://{name}:{port}"
    # The whole map must be a valid configuration (wrong types would crash every pod at start).
    GatewaySettings.model_validate(data)
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            sources = pod_spec(doc)["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": "sentinel-fleet-config"}} in sources
            assert {"secretRef": {"name": "sentinel-fleet-secrets"}} in sources
    # Passwords never sit in the ConfigMap.
    assert "DATABASE_URL" not in data
    assert "TIMESCALE_URL" not in data
    assert "ADMIN_TOKEN" not in data


def test_gateway_leaves_event_processing_to_its_own_deployment() -> None:
    gateway = pod_spec(of_kind("Deployment")["gateway"])["containers"][0]
    env = {e["name"]: e["value"] for e in gateway.get("env", [])}
    assert env["GATEWAY_RUN_EVENT_PROCESSOR"] == "false"
    assert GatewaySettings.model_validate(env).run_event_processor is False


def test_flags_the_manifests_and_compose_pass_are_accepted() -> None:
    """Every `--flag` a container command passes is one its module's --help lists."""
    commands: list[list[str]] = []
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            commands += [c["command"] for c in pod_spec(doc)["containers"]]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    commands += [s["command"] for s in compose["services"].values() if s.get("command", [""])[0] == "python"]
    flagged: dict[str, set[str]] = {}
    for command in commands:
        flags = {arg for arg in command[3:] if arg.startswith("--")}
        if flags:
            flagged.setdefault(command[2], set()).update(flags)
    assert set(flagged) == {"shared.migrate", "services.replicator", "tools.load_test"}
    for module, flags in flagged.items():
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        offered = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
        assert flags <= offered, f"{module} does not accept {flags - offered}"


# --- NetworkPolicies ---------------------------------------------------------------------------
# The paths the fleet needs inside the namespace (client pod -> server pod:port), and nothing else.
NEEDED_PATHS = {
    ("gateway", "analytics", 8001),  # proxy, dashboard
    ("gateway", "event-processor", 8002),  # dashboard
    ("gateway", "optimizer", 8003),  # proxy, dashboard
    ("gateway", "replicator", 8004),  # dashboard
    ("optimizer", "gateway", 8080),  # the processor's tuning when it runs in the gateway
    ("optimizer", "analytics", 8001),
    ("optimizer", "event-processor", 8002),
    ("optimizer", "replicator", 8004),
}
# Ports of the site's own servers, by who may reach them.
SERVER_PORTS = {
    "gateway": {9092},
    "analytics": {5432, 6379},
    "event-processor": {9092, 5432},
    "optimizer": set(),
    "replicator": {5432},
    "replicator-once": {5432},
    "migrate": {5432},
}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is modelled here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pods() -> dict[str, dict[str, str]]:
    """The labels of every pod template, by app.kubernetes.io/name."""
    out = {}
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            template = (
                doc["spec"]["jobTemplate"]["spec"]["template"]
                if doc["kind"] == "CronJob"
                else doc["spec"]["template"]
            )
            labels = template["metadata"]["labels"]
            out[labels["app.kubernetes.io/name"]] = labels
    return out


def _peers_in_namespace(peers: list[dict[str, Any]], pods: dict[str, dict[str, str]]) -> set[str]:
    """Pods of this namespace a rule's peers name (peers naming other namespaces are left out)."""
    return {
        name
        for peer in peers
        if "podSelector" in peer and "namespaceSelector" not in peer and "ipBlock" not in peer
        for name, labels in pods.items()
        if _selects(peer["podSelector"], labels)
    }


def test_every_pod_starts_denied_both_ways() -> None:
    policies = of_kind("NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny
    assert "egress" not in deny


def test_only_the_gateway_is_reachable_from_outside() -> None:
    pods = _pods()
    open_to_all: set[tuple[str, int]] = set()
    for policy in of_kind("NetworkPolicy").values():
        spec = policy["spec"]
        for rule in spec.get("ingress", []):
            peers = rule.get("from", [])
            outside = not peers or any("ipBlock" in p for p in peers)
            if outside:
                for name, labels in pods.items():
                    if _selects(spec["podSelector"], labels):
                        open_to_all |= {(name, port["port"]) for port in rule["ports"]}
            # Other namespaces may only scrape metrics, and only from `monitoring`.
            for peer in peers:
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"] == {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
    assert open_to_all == {("gateway", DEFAULT_PORTS["gateway"])}
    services = of_kind("Service")
    for name, service in services.items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name


def test_each_service_reaches_only_what_it_needs() -> None:
    pods = _pods()
    policies = of_kind("NetworkPolicy")
    service_ports = {name: doc["spec"]["ports"][0]["port"] for name, doc in of_kind("Service").items()}
    egress: set[tuple[str, str, int]] = set()
    ingress: set[tuple[str, str, int]] = set()
    external_ports: dict[str, set[int]] = {name: set() for name in pods}
    for policy_name, policy in policies.items():
        spec = policy["spec"]
        selected = {name for name, labels in pods.items() if _selects(spec["podSelector"], labels)}
        if policy_name in ("default-deny", "dns", "tracing"):
            continue
        for rule in spec.get("egress", []):
            ports = {p["port"] for p in rule["ports"]}
            if "to" not in rule:
                for name in selected:
                    external_ports[name] |= ports
                continue
            for target in _peers_in_namespace(rule["to"], pods):
                egress |= {(source, target, port) for source in selected for port in ports}
        for rule in spec.get("ingress", []):
            ports = {p["port"] for p in rule["ports"]}
            sources = _peers_in_namespace(rule["from"], pods) if "from" in rule else set(pods)
            for source in sources:
                ingress |= {(source, target, port) for target in selected for port in ports}
    # A path works only when the client may send and the server may receive.
    assert egress == NEEDED_PATHS
    assert ingress >= NEEDED_PATHS
    # Beyond those, only the gateway accepts anyone (its clients are everywhere).
    assert ingress - NEEDED_PATHS == {(name, "gateway", 8080) for name in pods} - NEEDED_PATHS
    for _, target, port in NEEDED_PATHS:
        assert service_ports[target] == port
    assert external_ports == SERVER_PORTS
    # Every pod of the fleet is covered by a policy of its own besides the namespace-wide ones.
    own = {
        name
        for policy_name, policy in policies.items()
        if policy_name not in ("default-deny", "dns", "tracing")
        for name, labels in pods.items()
        if _selects(policy["spec"]["podSelector"], labels)
    }
    assert own == set(pods)


def test_dns_and_tracing_are_the_only_namespace_wide_openings() -> None:
    policies = of_kind("NetworkPolicy")
    dns = policies["dns"]["spec"]
    assert dns["policyTypes"] == ["Egress"]
    assert {(p["port"], p["protocol"]) for p in dns["egress"][0]["ports"]} == {(53, "UDP"), (53, "TCP")}
    tracing = policies["tracing"]["spec"]
    assert tracing["policyTypes"] == ["Egress"]
    (rule,) = tracing["egress"]
    assert rule["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "jaeger"}}}]


# --- secrets and the upload spool ----------------------------------------------------------------


def test_redis_password_and_other_secrets_stay_out_of_the_configmap() -> None:
    (configmap,) = of_kind("ConfigMap").values()
    for name in ("CACHE_PASSWORD", "DATABASE_URL", "TIMESCALE_URL", "ADMIN_TOKEN", "API_KEYS"):
        assert name not in configmap["data"], name
    # The Secret (created by the operator) is where the documented password goes.
    assert "CACHE_PASSWORD" in (K8S_DIR / "configmap.yaml").read_text()


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_uploads_spool_to_a_volume_sized_for_the_upload_limit() -> None:
    (configmap,) = of_kind("ConfigMap").values()
    spool = configmap["data"]["UPLOAD_SPOOL_DIR"]
    limit = int(configmap["data"]["UPLOAD_MAX_BYTES"])
    spec = pod_spec(of_kind("Deployment")["analytics"])
    (container,) = spec["containers"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == spool)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    # A volume with a real size: a full spool fails a write (507 to that upload) instead of an
    # emptyDir's sizeLimit evicting the pod with every upload in it.
    assert "emptyDir" not in volume
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    size = _bytes(claim["resources"]["requests"]["storage"])
    # Concurrent uploads at the limit fit, and the spool is not the small /tmp.
    assert size >= 3 * limit
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert _bytes(tmp["emptyDir"]["sizeLimit"]) < limit
    assert not spool.startswith("/tmp")
