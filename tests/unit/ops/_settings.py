"""The environment variables the fleet's settings classes read, for checking deployment files."""

from __future__ import annotations

import importlib

from pydantic import AliasChoices

from shared.settings import FleetSettings


def setting_names() -> set[str]:
    """Every environment variable a settings class of the fleet reads."""
    classes: list[type[FleetSettings]] = [FleetSettings]
    for service in ("gateway", "analytics", "optimizer", "replicator"):
        module = importlib.import_module(f"services.{service}.settings")
        classes += [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, FleetSettings) and c is not FleetSettings
        ]
    names: set[str] = set()
    for cls in classes:
        for field in cls.model_fields.values():
            alias = field.validation_alias
            if isinstance(alias, str):
                names.add(alias)
            elif isinstance(alias, AliasChoices):
                names.update(str(choice) for choice in alias.choices if isinstance(choice, str))
    return names
