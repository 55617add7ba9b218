"""The proxy route table: loading, resolution of upstream settings, matching, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.routes_table import RouteConfigError, load_routes, match
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
