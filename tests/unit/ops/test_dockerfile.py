"""deploy/Dockerfile, checked without a Docker engine: stages, user, what it copies and runs.

The build stage's `pip install .` is replayed for real: the files the Dockerfile copies (and
.dockerignore lets through) are put in an empty directory and built into a wheel, which must
hold every module and data file the containers start. `make compose-test` builds and runs the
image itself.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from shared.settings import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in instructions():
        if keyword == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else str(len(result))
            current = result.setdefault(name, [])
        elif current is not None:
            current.append((keyword, args))
    return result


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, '/'-separated) out of the build context.

    Follows Docker's rules for the patterns this repository uses: a pattern matches the path or
    any of its parent directories, `**` matches any number of directories, later `!` patterns
    re-include.
    """
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")
        if any(
            re.fullmatch(regex, c)
            or (pattern.startswith("**/") and fnmatch.fnmatch(c.split("/")[-1], pattern[3:]))
            for c in candidates
        ):
            excluded = not negate
    return excluded


def copy_sources() -> list[tuple[str, list[str], str]]:
    """(stage, sources, destination) of every COPY from the build context."""
    out = []
    for stage, steps in stages().items():
        for keyword, args in steps:
            if keyword == "COPY" and "--from=" not in args:
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                out.append((stage, words[:-1], words[-1]))
    return out


def test_multi_stage_build_runs_as_an_unprivileged_user() -> None:
    all_stages = stages()
    assert list(all_stages) == ["build", "runtime"]
    runtime = all_stages["runtime"]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the final stage must name its user"
    assert users[-1] not in ("root", "0"), "the final stage must not run as root"
    assert any(k == "COPY" and "--from=build" in a and "/opt/venv" in a for k, a in runtime)
    # The compiler-free runtime gets the finished virtual environment, not pip's build inputs.
    assert not any(k == "COPY" and a.split()[0] in ("shared", "services") for k, a in runtime)
    build_runs = " ".join(a for k, a in all_stages["build"] if k == "RUN")
    assert re.search(r"pip install \$offline --no-deps \.(\s|;|$)", build_runs), (
        "the project: `pip install .`"
    )
    # Exactly the runtime set of the lock, no more: uv exports it, pip installs it as listed.
    assert "uv export --frozen --no-dev --no-emit-project" in build_runs
    assert "pip install $offline --no-deps -r /tmp/runtime.txt" in build_runs
    assert "pip check" in build_runs
    assert "/opt/uv" not in " ".join(a for k, a in all_stages["runtime"] if k == "COPY")
    # Offline when the wheelhouse holds wheels: no index at all.
    assert "--no-index --find-links=/wheelhouse" in build_runs
    assert ("COPY", "deploy/wheelhouse /wheelhouse") in all_stages["build"]


def test_base_image_is_a_build_argument_defaulting_to_the_public_python_image() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", text, re.MULTILINE)
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms
    assert all(args.startswith("${BASE_IMAGE} AS ") for args in froms)


def test_image_has_a_healthcheck_that_works_for_every_service() -> None:
    runtime = stages()["runtime"]
    (check,) = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    assert check.endswith('CMD ["python", "-m", "shared.healthcheck"]')
    assert importlib.util.find_spec("shared.healthcheck") is not None


def test_everything_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    copies = copy_sources()
    assert copies
    for stage, sources, _ in copies:
        for source in sources:
            path = REPO_ROOT / source
            assert path.exists(), f"{stage}: COPY {source}: no such file in the repository"
            assert not ignored(source), f"{stage}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".data/postgres",
        "tests/conftest.py",
        ".env",
        "shared/__pycache__/db.cpython-311.pyc",
        "sentinel_fleet.egg-info/PKG-INFO",
    ):
        assert ignored(path), path
    for path in (
        "pyproject.toml",
        "shared/db.py",
        "services/gateway/app.py",
        "config/monitoring.yaml",
        "tools/load_test.py",
        "deploy/wheelhouse/README.md",
    ):
        assert not ignored(path), path


def test_modules_the_image_runs_exist() -> None:
    """The default command, the smoke import of the build stage, and every compose command."""
    modules: set[str] = set()
    for keyword, args in instructions():
        if keyword == "CMD":
            command = yaml.safe_load(args)
            assert command[:2] == ["python", "-m"]
            modules.add(command[2])
        if keyword == "RUN" and "python -c" in args:
            imports = re.search(r'python -c "import ([^"]+)"', args)
            assert imports
            modules.update(m.strip() for m in imports.group(1).split(","))
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        command = service.get("command")
        if service.get("build") or str(service.get("image", "")).startswith("${FLEET_IMAGE"):
            assert command[:2] == ["python", "-m"], name
            modules.add(command[2])
    assert {"services.gateway", "shared.migrate", "tools.load_test"} <= modules
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, f"no module {module}"


def test_the_image_relies_on_the_packaged_config_files() -> None:
    """The files come with the package (the build stage copies config/ for the wheel); the
    runtime stage neither copies them nor points a setting at a path of its own."""
    env_lines = " ".join(a for k, a in stages()["runtime"] if k == "ENV")
    for name in ("CIRCUIT_BREAKER_CONFIG", "MONITORING_CONFIG", "GATEWAY_ROUTES_CONFIG"):
        assert name not in env_lines, name
    assert not any(sources == ["config"] for stage, sources, _ in copy_sources() if stage == "runtime")
    assert any(sources == ["config"] for stage, sources, _ in copy_sources() if stage == "build")


def test_the_build_stage_produces_a_complete_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for stage, sources, _ in copy_sources():
        if stage != "build":
            continue
        for source in sources:
            origin = REPO_ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy(origin, context / source)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "uv"),
            "build",
            "--wheel",
            "--quiet",
            "--out-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = next((tmp_path / "dist").glob("sentinel_fleet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "services/gateway/__main__.py",
        "services/gateway/event_processor/__main__.py",
        "services/analytics/__main__.py",
        "services/optimizer/__main__.py",
        "services/replicator/__main__.py",
        "shared/migrate.py",
        "shared/healthcheck.py",
        "shared/py.typed",
    ):
        assert module in names, module
    # What the services read at run time, inside the packages.
    for config in (REPO_ROOT / "config").glob("*.yaml"):
        assert f"shared/_bundled/config/{config.name}" in names, config.name
    for static in (REPO_ROOT / "services/gateway/static").iterdir():
        assert f"services/gateway/static/{static.name}" in names, static.name
    # The load generator ships; the laptop and test helpers never do.
    assert "tools/load_test.py" in names
    assert not [n for n in names if n.startswith(("tools/dev/", "tools/compose_test/"))]
    for target in ("primary", "replica"):
        shipped = {n for n in names if n.startswith(f"shared/migrations/{target}/") and n.endswith(".sql")}
        in_repo = {
            f"shared/migrations/{target}/{p.name}"
            for p in (REPO_ROOT / "shared/migrations" / target).glob("*.sql")
        }
        assert shipped, target
        assert shipped == in_repo, target
