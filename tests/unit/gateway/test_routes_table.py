"""The proxy route table: loading, resolution of upstream settings, matching, errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.routes_table import (
    NormalisedPath,
    RouteConfigError,
    UnsafePath,
    load_routes,
    match,
    normalise_any_path,
    normalise_path,
)
from services.gateway.settings import GatewaySettings
from shared.settings import REPO_ROOT

SETTINGS = GatewaySettings(ANALYTICS_URL="http://analytics:9001/", OPTIMIZER_URL="http://optimizer:9003")


def test_repository_table_routes_every_public_prefix() -> None:
    routes = load_routes(REPO_ROOT / "config" / "routes.yaml", SETTINGS)
    expected = {
        "/api/v1/analytics/summary": ("http://analytics:9001", "analytics"),
        "/api/v1/uploads": ("http://analytics:9001", "analytics"),
        "/api/v1/performance/summary": ("http://analytics:9001", "analytics"),
        "/api/v1/cache/report": ("http://analytics:9001", "analytics"),
        "/api/v1/optimizer/status": ("http://optimizer:9003", "optimizer"),
    }
    for path, (base, breaker) in expected.items():
        found = match(routes, path)
        assert found is not None, path
        assert (found.base_url, found.route.breaker) == (base, breaker)
    assert match(routes, "/api/v1/cachex") is None
    assert match(routes, "/api/v1/events") is None


def test_longest_prefix_wins(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n"
        "  - {prefix: /api, upstream: analytics_url, breaker: analytics}\n"
        "  - {prefix: /api/v1/optimizer/, upstream: 'http://elsewhere:1', breaker: optimizer,"
        " timeout: 500ms}\n"
    )
    routes = load_routes(path, SETTINGS)
    found = match(routes, "/api/v1/optimizer/status")
    assert found is not None
    assert found.base_url == "http://elsewhere:1"
    assert found.route.timeout == 0.5
    other = match(routes, "/api/v2/x")
    assert other is not None
    assert other.route.breaker == "analytics"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes:\n  - {prefix: api, upstream: analytics_url, breaker: a}\n", "routes[0].prefix"),
        ("routes:\n  - {prefix: /a, upstream: nowhere, breaker: a}\n", "routes[0].upstream"),
        (
            "routes:\n  - {prefix: /a, upstream: analytics_url, breaker: a, timeout: -1}\n",
            "routes[0].timeout",
        ),
        ("routes:\n  - {prefix: /a, upstream: analytics_url}\n", "routes[0].breaker"),
        ("routes:\n  - {prefix: /a, upstream: analytics_url, breaker: a, colour: red}\n", "routes[0].colour"),
        (
            "routes:\n  - {prefix: /a, upstream: analytics_url, breaker: a}\n"
            "  - {prefix: /a/, upstream: analytics_url, breaker: a}\n",
            "routes[1].prefix",
        ),
        ("routez: []\n", "'routes' list"),
    ],
)
def test_wrong_entries_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(RouteConfigError) as info:
        load_routes(path, SETTINGS)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


HOSTILE_PATHS = [
    b"/api/v1/analytics/../../../admin/tuning",
    b"/api/v1/analytics/./summary",
    b"/api/v1/analytics/..",
    b"/api/v1/analytics/%2e%2e/%2e%2e/admin/tuning",
    b"/api/v1/analytics/%2E%2E/admin",
    b"/api/v1/analytics/.%2e/admin",
    b"/api/v1/analytics/%2e/summary",
    b"/api/v1/analytics/a%2fb",
    b"/api/v1/analytics/a%2F..%2F..%2Fadmin",
    b"/api/v1/analytics/a%5c..%5cadmin",
    b"/api/v1/analytics/a\\..\\admin",
    b"/api/v1/analytics/a%00b",
    b"/api/v1/analytics/a\x00b",
    b"/api/v1/analytics/a%0ab",
    b"/api/v1/analytics/%ff%fe",
    b"/api/v1/analytics/50%",
    b"/api/v1/analytics/%zz",
    b"api/v1/analytics",
]


@pytest.mark.parametrize("raw", HOSTILE_PATHS)
def test_paths_that_cannot_be_normalised_safely_are_refused(raw: bytes) -> None:
    with pytest.raises(UnsafePath):
        normalise_path(raw)


@pytest.mark.parametrize(
    ("raw", "decoded", "encoded"),
    [
        (b"/api/v1/analytics/summary", "/api/v1/analytics/summary", "/api/v1/analytics/summary"),
        (b"/api/v1/analytics/caf%c3%a9", "/api/v1/analytics/café", "/api/v1/analytics/caf%C3%A9"),
        (b"/api/v1/analytics/a%20b", "/api/v1/analytics/a b", "/api/v1/analytics/a%20b"),
        (b"/api/v1/analytics/a%7Cb|c", "/api/v1/analytics/a|b|c", "/api/v1/analytics/a%7Cb%7Cc"),
        (b"/api/v1/analytics/100%25", "/api/v1/analytics/100%", "/api/v1/analytics/100%25"),
        (b"/api/v1/analytics/a;b=c@d:e", "/api/v1/analytics/a;b=c@d:e", "/api/v1/analytics/a;b=c@d:e"),
        (b"/api/v1/analytics/...x/..y", "/api/v1/analytics/...x/..y", "/api/v1/analytics/...x/..y"),
    ],
)
def test_other_paths_are_encoded_canonically(raw: bytes, decoded: str, encoded: str) -> None:
    path = normalise_path(raw)
    assert (path.decoded, path.encoded) == (decoded, encoded)


@pytest.mark.parametrize(
    "raw",
    [b"/api/v1/analytics/x", b"/api/v1/analytics/caf%c3%a9", b"/a/%7B%22q%22%7D", b"/a/~!$&'()*+,;=:@-._"],
)
def test_neither_http_client_changes_the_canonical_path(raw: bytes) -> None:
    """What the proxy builds is what goes on the wire with both transports: httpx's URL parser
    (httpcore) and yarl's (aiohttp, which requotes and resolves dot segments)."""
    encoded = normalise_path(raw).encoded
    url = httpx.URL("http://upstream:8001" + encoded + "?q=1")
    assert url.raw_path.decode().partition("?")[0] == encoded
    assert yarl.URL(str(url)).raw_path == encoded


def _outcome(normalise: object, raw: bytes) -> NormalisedPath | str:
    try:
        return normalise(raw)  # type: ignore[operator,no-any-return]
    except UnsafePath:
        return "refused"


@given(
    st.lists(
        st.sampled_from(
            [
                "/",
                ".",
                "..",
                "a",
                "Z",
                "9",
                "~",
                "-",
                "_",
                ":",
                "@",
                "%",
                "%2e",
                "%41",
                "\\",
                "é",
                " ",
                "?",
                "!",
                "'",
                "=",
                "%c3%a9",
                "\x00",
            ]
        ),
        max_size=12,
    )
)
def test_the_shortcut_for_plain_paths_agrees_with_the_general_normalisation(parts: list[str]) -> None:
    raw = ("/" + "".join(parts)).encode("utf-8")
    assert _outcome(normalise_path, raw) == _outcome(normalise_any_path, raw)
