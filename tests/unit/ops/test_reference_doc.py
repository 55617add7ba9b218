"""docs/reference.md is the fleet's own reference: complete, true to the code, and the only one cited."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.analytics.settings import AnalyticsSettings
from services.gateway.event_processor.settings import EventProcessorSettings
from services.gateway.settings import GatewaySettings
from services.optimizer.settings import OptimizerSettings
from services.replicator.settings import ReplicatorSettings
from shared.settings import REPO_ROOT, FleetSettings

REFERENCE = (REPO_ROOT / "docs" / "reference.md").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SETTINGS_CLASSES: list[type[BaseSettings]] = [
    FleetSettings,
    EventProcessorSettings,
    GatewaySettings,
    AnalyticsSettings,
    OptimizerSettings,
    ReplicatorSettings,
]


def setting_names(cls: type[BaseSettings]) -> set[str]:
    names: set[str] = set()
    for field in cls.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
    return names


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_in_the_reference(cls: type[BaseSettings]) -> None:
    missing = sorted(name for name in setting_names(cls) if f"`{name}`" not in REFERENCE)
    assert missing == []


def test_every_command_in_the_reference_exists_and_has_its_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    rows = re.findall(r"^\| [^|]+ \| `python -m ([\w.]+)[^`]*`[^|]*\| `([\w-]+)` \|", REFERENCE, re.MULTILINE)
    assert len(rows) >= 8
    for module, script in rows:
        assert importlib.util.find_spec(module) is not None, module
        target = scripts[script].split(":")[0]
        # The script runs the module's main(): `services.x.__main__` for a package, else the module.
        assert target in (module, f"{module}.__main__"), (script, target, module)


def test_every_fixed_metric_name_is_defined_in_the_code() -> None:
    section = REFERENCE.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?", section, re.MULTILINE))
    flat = sorted(
        {n for pair in names for n in pair if n} - {"http_requests_total", "http_request_duration_seconds"}
    )
    assert len(flat) >= 12
    source = "\n".join(
        p.read_text() for p in [*REPO_ROOT.glob("shared/**/*.py"), *REPO_ROOT.glob("services/**/*.py")]
    )
    for name in flat:
        base = name.removesuffix("_total")
        assert f'"{name}"' in source or f'"{base}"' in source, name


# Spelled in pieces so this file does not match itself.
CITATIONS = ("CONTRACT" + " section", "CONTRACT" + ".md", "../" + "shared/")


def test_the_repository_cites_no_outside_document() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO_ROOT / name
        if path.suffix in {".lock", ".png", ".ico", ".woff2"} or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if any(word in text for word in CITATIONS):
            offenders.append(name)
    assert offenders == []
