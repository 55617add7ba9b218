"""The OpenAPI document every service publishes, and its `/docs` and `/redoc` pages served offline.

FastAPI builds the document from the routes; :func:`fleet_openapi` then states what FastAPI
cannot infer: every 4xx and 5xx answer is the fleet's error envelope (FastAPI documents its own
`{"detail": ...}` shape, which the fleet never sends), and schemas written by hand are moved to
where their references point.

Swagger UI and ReDoc come from the `fastapi-offline` package, which ships their JavaScript and
CSS (MIT, Apache-2.0); the pages therefore load on networks with no route to a public CDN.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from shared.errors import ErrorEnvelope

DOCS_ASSETS_URL = "/docs-assets"
_ENVELOPE_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
_DEFAULT_ERRORS = {
    "4XX": "the request is wrong; `error.message` says what and where",
    "5XX": "the service or one of its dependencies failed; retry after `Retry-After` when present",
}
# FastAPI's own error shapes, replaced by the envelope and then unreferenced.
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document.get("paths", {}).items()
        for method, operation in item.items()
        if method in _HTTP_METHODS
    ]


def document_error_envelope(document: dict[str, Any]) -> None:
    """Every 4xx/5xx response of every operation is the envelope unless the route declared another
    body for that status; `4XX` and `5XX` always exist."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(
        ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {})
    )
    schemas["ErrorEnvelope"] = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    for _, _, operation in _operations(document):
        responses = operation.setdefault("responses", {})
        for status, description in _DEFAULT_ERRORS.items():
            responses.setdefault(status, {"description": description})
        for status, response in responses.items():
            if status[0] not in "45":
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if schema and schema.get("$ref", "").rsplit("/", 1)[-1] not in _FASTAPI_ERROR_SCHEMAS:
                continue  # a route that declares its own error body (e.g. /ready's 503) keeps it
            if response.get("description") == "Validation Error":
                response["description"] = "invalid input; `error.details` lists each field and why"
            response["content"] = {"application/json": {"schema": dict(_ENVELOPE_REF)}}
    for name in _FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)


def hoist_nested_defs(document: dict[str, Any]) -> None:
    """Schemas given by hand (`openapi_extra`, from `TypeAdapter.json_schema()`) carry their own
    `$defs` and refer to `#/$defs/...`, which does not exist at the document root; move those
    definitions into `components.schemas` and point the references there."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            for name, definition in node.pop("$defs", {}).items():
                definition = walk(definition)
                if schemas.setdefault(name, definition) != definition:
                    raise ValueError(f"two different schemas are named {name!r}")
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    document["paths"] = walk(document.get("paths", {}))


def fleet_openapi(app: FastAPI) -> dict[str, Any]:
    """`app.openapi` for every service: FastAPI's document, completed as described above; cached."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        hoist_nested_defs(document)
        document_error_envelope(document)
        app.openapi_schema = document
    return app.openapi_schema


def install_offline_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` from the package's own copies of their assets."""
    static = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(static)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
