"""Each service's OpenAPI document: valid, self-contained, and honest about shapes, errors and auth.

The documents are built from the real app factories (no server needed: FastAPI builds the
document from the routes). Answers are checked against these documents by the schemathesis
suite (tests/e2e/test_api_fuzz.py), which runs against real processes.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from services.analytics.app import create_app as analytics_app
from services.analytics.settings import AnalyticsSettings
from services.gateway.app import create_app as gateway_app
from services.gateway.event_processor.app import create_app as processor_app
from services.gateway.settings import GatewaySettings
from services.optimizer.app import create_app as optimizer_app
from services.optimizer.settings import OptimizerSettings
from services.replicator.app import create_app as replicator_app
from services.replicator.settings import ReplicatorSettings

BUILDERS: dict[str, Callable[[], FastAPI]] = {
    "gateway": lambda: gateway_app(GatewaySettings(TRACING_ENABLED=False)),
    "event_processor": lambda: processor_app(GatewaySettings(TRACING_ENABLED=False)),
    "analytics": lambda: analytics_app(AnalyticsSettings(TRACING_ENABLED=False)),
    "optimizer": lambda: optimizer_app(OptimizerSettings(TRACING_ENABLED=False)),
    "replicator": lambda: replicator_app(ReplicatorSettings(TRACING_ENABLED=False)),
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Answers that are not JSON documents of their own: the proxy passes the upstream's answer through.
PASS_THROUGH = re.compile(r"^/api/v1/(analytics|performance|optimizer|uploads|cache)/\{path\}$")


@functools.cache
def openapi_of(name: str) -> dict[str, Any]:
    return BUILDERS[name]().openapi()


@pytest.fixture(params=sorted(BUILDERS))
def document(request: pytest.FixtureRequest) -> dict[str, Any]:
    return openapi_of(request.param)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)  # type: ignore[arg-type]


def test_every_reference_resolves_within_the_document(document: dict[str, Any]) -> None:
    dangling = []
    for ref in set(refs(document)):
        try:
            resolve(document, ref)
        except (KeyError, AssertionError):
            dangling.append(ref)
    assert not dangling


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    counts = Counter(op["operationId"] for _, _, op in operations(document))
    assert [op_id for op_id, n in counts.items() if n > 1] == []


def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert set(re.findall(r"\{(\w+)\}", path)) == declared, f"{method.upper()} {path}"


def test_every_error_answer_is_the_fleet_envelope(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    for path, method, op in operations(document):
        responses = op["responses"]
        assert {"4XX", "5XX"} <= set(responses), f"{method.upper()} {path}"
        for status, response in responses.items():
            if status[0] not in "45" or path == "/ready":
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, f"{status} of {method} {path}"


def test_every_json_answer_declares_its_shape(document: dict[str, Any]) -> None:
    loose = []
    for path, method, op in operations(document):
        if PASS_THROUGH.match(path):
            continue
        for status, response in op["responses"].items():
            if status[0] != "2":
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if not schema or (schema.get("additionalProperties") is True and "properties" not in schema):
                loose.append(f"{method.upper()} {path} {status}")
    assert loose == []


def test_the_ready_probe_documents_its_503_body(document: dict[str, Any]) -> None:
    ready = document["paths"]["/ready"]["get"]["responses"]
    assert ready["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}


def test_writes_and_admin_calls_declare_their_credentials() -> None:
    gateway = openapi_of("gateway")
    analytics = openapi_of("analytics")
    for doc in (gateway, analytics):
        schemes = doc["components"]["securitySchemes"]
        assert schemes["ApiKey"] == {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": schemes["ApiKey"]["description"],
        }
        assert schemes["AdminToken"]["scheme"] == "bearer"
    assert gateway["paths"]["/api/v1/events"]["post"]["security"] == [{"ApiKey": []}]
    assert analytics["paths"]["/api/v1/uploads"]["post"]["security"] == [{"ApiKey": []}]
    assert analytics["paths"]["/admin/tuning"]["put"]["security"] == [{"AdminToken": []}]


def test_request_bodies_of_events_and_uploads_are_declared() -> None:
    events = openapi_of("gateway")["paths"]["/api/v1/events"]["post"]["requestBody"]
    one_or_many = events["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/AccessEvent"} in one_or_many
    assert {"type": "array", "items": {"$ref": "#/components/schemas/AccessEvent"}} in one_or_many
    upload = openapi_of("analytics")["paths"]["/api/v1/uploads"]["post"]["requestBody"]
    file_field = upload["content"]["multipart/form-data"]["schema"]["properties"]["file"]
    assert file_field["format"] == "binary"


def test_status_is_at_one_place_with_the_optimizer_alias() -> None:
    for name in ("event_processor", "optimizer", "replicator"):
        paths = openapi_of(name)["paths"]
        assert "$ref" in paths["/status"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    optimizer = openapi_of("optimizer")["paths"]
    alias = optimizer["/api/v1/optimizer/status"]["get"]["responses"]["200"]
    assert alias == optimizer["/status"]["get"]["responses"]["200"]


def test_tuning_has_one_shape_everywhere() -> None:
    for name in ("analytics", "event_processor", "replicator"):
        doc = openapi_of(name)
        ref = doc["paths"]["/admin/tuning"]["get"]["responses"]["200"]["content"]["application/json"]
        view = resolve(doc, ref["schema"]["$ref"])
        assert {"defaults", "bounds"} <= set(view["required"]), name
        bounds = view["properties"]["bounds"]["additionalProperties"]
        assert bounds == {"$ref": "#/components/schemas/Bounds"}, name
