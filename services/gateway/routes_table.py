"""The proxy's route table (`config/routes.yaml`): path prefix → upstream, breaker, timeout."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.breaker import Seconds
from shared.settings import FleetSettings


class RouteConfigError(ValueError):
    """The route file cannot be used; the message names the file and the key."""


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(description="path prefix on the gateway, matched on whole segments")
    upstream: str = Field(description="a URL setting name such as analytics_url, or a literal http(s) URL")
    breaker: str = Field(min_length=1)
    timeout: Seconds = Field(30.0, gt=0)
    stale_for: Seconds = Field(
        0.0, ge=0, description="max age of a GET answer served while the upstream is down"
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "#" in value:
            raise ValueError("must be a path starting with '/'")
        return value.rstrip("/") or "/"

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/") or self.prefix == "/"


class ResolvedRoute(BaseModel):
    model_config = ConfigDict(frozen=True)

    route: Route
    base_url: str


def _resolve_upstream(upstream: str, settings: FleetSettings, where: str) -> str:
    if upstream.startswith(("http://", "https://")):
        return upstream.rstrip("/")
    value = getattr(settings, upstream, None) if upstream.endswith("_url") else None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise RouteConfigError(
            f"{where}.upstream: {upstream!r} is neither a URL setting (such as analytics_url) "
            "nor an http(s) URL"
        )
    return value.rstrip("/")


def load_routes(path: Path, settings: FleetSettings) -> list[ResolvedRoute]:
    """Routes sorted longest prefix first; a wrong entry raises RouteConfigError naming file and key."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RouteConfigError(f"{path}: cannot read the route table ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RouteConfigError(f"{path}: not valid YAML: {exc}") from None
    entries = (document or {}).get("routes") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise RouteConfigError(f"{path}: expected a top-level 'routes' list")
    resolved: list[ResolvedRoute] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: routes[{index}]"
        try:
            route = Route.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise RouteConfigError(problems) from None
        if route.prefix in seen:
            raise RouteConfigError(f"{where}.prefix: {route.prefix!r} is listed twice")
        seen.add(route.prefix)
        resolved.append(
            ResolvedRoute(route=route, base_url=_resolve_upstream(route.upstream, settings, where))
        )
    resolved.sort(key=lambda r: len(r.route.prefix), reverse=True)
    return resolved


def match(routes: list[ResolvedRoute], path: str) -> ResolvedRoute | None:
    for candidate in routes:
        if candidate.route.matches(path):
            return candidate
    return None
