"""The proxy's route table (`config/routes.yaml`): path prefix → upstream, breaker, timeout.

A request path is normalised before it is matched (`normalise_path`), and the upstream gets
the normalised form, so the prefix that was matched is the prefix the upstream sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

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
    require_api_key: frozenset[Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]] = Field(
        frozenset(),
        description="methods that need a valid X-API-Key at the gateway when API_KEYS is set",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "#" in value:
            raise ValueError("must be a path starting with '/'")
        return value.rstrip("/") or "/"

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/") or self.prefix == "/"


class UnsafePath(ValueError):
    """A path the proxy refuses (400): it cannot be normalised without guessing."""


@dataclass(frozen=True)
class NormalisedPath:
    decoded: str  # what the route table matches
    encoded: str  # what the upstream receives: the canonical percent-encoding of `decoded`


# Encoded `.`, `/`, `\` and NUL: a client has no reason to send them in a path, and decoders
# disagree on them (yarl, under the aiohttp transport, turns `%2e%2e` into a `..` segment and
# resolves it after the route was matched).
_ENCODED_SEPARATORS = re.compile(rb"%(2e|2f|5c|00)", re.IGNORECASE)
# RFC 3986 `pchar` minus `%` plus `/`: left as is by httpx's URL parser and by yarl's requoter,
# so the bytes the proxy builds are the bytes the upstream receives.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# A path made only of characters `quote(..., safe=_PATH_SAFE)` leaves alone.
_PLAIN_PATH = re.compile(rb"/[A-Za-z0-9/:@!$&'()*+,;=\-._~]*")


def normalise_path(raw_path: bytes) -> NormalisedPath:
    """The path as matched and as forwarded, or UnsafePath.

    Refused: dot segments (`.`, `..`, which HTTP clients resolve after matching), encoded dots,
    slashes, backslashes and NUL, backslashes, control characters, invalid percent-encoding and
    paths that are not UTF-8. Everything else is re-encoded canonically.
    """
    if _PLAIN_PATH.fullmatch(raw_path):
        # The common case, decided without decoding: nothing percent-encoded, nothing `quote`
        # would change, so the path is its own canonical form; only dot segments remain to check.
        decoded = raw_path.decode("ascii")
        if "/." in decoded and any(segment in {".", ".."} for segment in decoded.split("/")):
            raise UnsafePath("a '.' or '..' segment in the path")
        return NormalisedPath(decoded=decoded, encoded=decoded)
    return normalise_any_path(raw_path)


def normalise_any_path(raw_path: bytes) -> NormalisedPath:
    """:func:`normalise_path` without its shortcut for plain paths (which must agree with it)."""
    if b"\\" in raw_path:
        raise UnsafePath("a backslash in the path")
    if _ENCODED_SEPARATORS.search(raw_path):
        raise UnsafePath("an encoded dot, slash, backslash or NUL (%2e, %2f, %5c, %00) in the path")
    if re.search(rb"%(?![0-9A-Fa-f]{2})", raw_path):
        raise UnsafePath("a '%' that does not start a percent-encoded byte")
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePath("the path is not UTF-8 once percent-decoded") from None
    if not decoded.startswith("/"):
        raise UnsafePath("the path must start with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise UnsafePath("a control character in the path")
    if any(segment in {".", ".."} for segment in decoded.split("/")):
        raise UnsafePath("a '.' or '..' segment in the path")
    return NormalisedPath(decoded=decoded, encoded=quote(decoded, safe=_PATH_SAFE))


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
