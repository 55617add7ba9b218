"""`python -m shared.healthcheck`: the image's one healthcheck for every service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import healthcheck
from shared.settings import REPO_ROOT


def _proc(tmp_path: Path, *commands: list[str]) -> Path:
    tmp_path.mkdir(exist_ok=True)
    for pid, command in enumerate(commands, start=1):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(c.encode() for c in command) + b"\0")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_finds_the_fleet_service_the_container_runs(tmp_path: Path) -> None:
    proc = _proc(tmp_path, ["/usr/bin/tini", "--"], ["python", "-m", "services.gateway.event_processor"])
    assert healthcheck.running_service(proc) == "services.gateway.event_processor"
    assert healthcheck.running_service(_proc(tmp_path / "x", ["python", "-m", "shared.migrate"])) is None


def test_every_service_module_has_its_port_setting() -> None:
    from shared.settings import FleetSettings

    for module, field in healthcheck.PORT_FIELDS.items():
        assert field in FleetSettings.model_fields, module
        assert (REPO_ROOT / module.replace(".", "/") / "__main__.py").is_file(), module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.healthcheck", *args],
        cwd=REPO_ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(("args", "code"), [(["not-a-port"], 2), (["1"], 1)])
def test_bad_port_or_nothing_listening_is_unhealthy(args: list[str], code: int) -> None:
    result = _run(*args)
    assert result.returncode == code, result.stderr
    assert result.stderr.strip()
