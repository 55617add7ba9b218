"""The commands people run by hand, run as they would: `--help`, bad settings, logs, progress.

Each command runs in a subprocess from a directory outside the repository (no `.env` there),
so what is checked is what a person at a terminal sees.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.__main__ import heartbeat
from shared.settings import REPO_ROOT
from tools.dev.embedded import free_port
from tools.dev.run_fleet import child_log_format

SERVICES = [
    "services.gateway",
    "services.gateway.event_processor",
    "services.analytics",
    "services.optimizer",
    "services.replicator",
]
COMMANDS = [
    *SERVICES,
    "shared.migrate",
    "services.optimizer.index_cli",
    "services.optimizer.index_cli analyze",
    "services.optimizer.index_cli create",
    "tools.load_test",
    "bench",
    "tools.dev.run_fleet",
    "tools.dev.object_store",
]
# Settings that would point a service at a server: unset, so "missing" can be tested.
SERVER_SETTINGS = ("DATABASE_URL", "TIMESCALE_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BROKERS")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_SETTINGS and not k.startswith("LOG_")}
    # The repository on the path: `bench` and `tools.dev` are not installed packages.
    return {**env, "PYTHONPATH": str(REPO_ROOT), "TRACING_ENABLED": "false", **extra}


def run(
    command: str, tmp: Path, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command.split()],
        cwd=tmp,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def help_pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """`python -m X --help` of every command, run concurrently (each one is mostly imports)."""
    tmp = tmp_path_factory.mktemp("help")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda c: run(f"{c} --help", tmp), COMMANDS)
        return dict(zip(COMMANDS, results, strict=True))


def options_without_help(page: str) -> list[str]:
    """Arguments listed in an argparse help page with no help text after them."""
    missing = []
    lines = page.splitlines()
    for i, line in enumerate(lines):
        if not re.match(r"^  \S", line):
            continue
        spec, _, text = line.strip().partition("  ")
        if text.strip():
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if spec.startswith("{") and re.match(r"^ {4}\S", following):
            continue  # subcommands: each one is listed below with its own help
        # A long option's help starts on the next line, indented to the help column.
        if not re.match(r"^ {6,}\S", following):
            missing.append(spec)
    return missing


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_usage_and_every_option_has_help_text(
    command: str, help_pages: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = help_pages[command]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: "), result.stdout[:200]
    assert "Traceback" not in result.stderr
    assert options_without_help(result.stdout) == [], result.stdout


def test_the_help_checker_finds_an_option_without_help() -> None:
    page = (
        "positional arguments:\n  {analyze,create}\n    analyze   what it does\n\n"
        "options:\n  -h, --help  show this\n  --people\n"
        "  --long-option-name VALUE\n                        text\n"
    )
    assert options_without_help(page) == ["--people"]


BAD_SETTINGS: list[tuple[str, dict[str, str], str]] = [
    (
        "services.gateway",
        {"GATEWAY_PORT": "abc", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        "GATEWAY_PORT",
    ),
    ("services.gateway", {"GATEWAY_PORT": "8080"}, "KAFKA_BOOTSTRAP_SERVERS"),
    ("services.gateway.event_processor", {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, "DATABASE_URL"),
    (
        "services.gateway.event_processor",
        {"EVENT_PROCESSOR_BATCH_SIZE": "0"},
        "EVENT_PROCESSOR_BATCH_SIZE",
    ),
    ("services.analytics", {}, "DATABASE_URL"),
    (
        "services.analytics",
        {"LOG_LEVEL": "chatty", "DATABASE_URL": "postgresql://x@127.0.0.1:9/x"},
        "LOG_LEVEL",
    ),
    ("services.optimizer", {"OPTIMIZER_INTERVAL": "-1"}, "OPTIMIZER_INTERVAL"),
    ("services.replicator", {"DATABASE_URL": "postgresql://x@127.0.0.1:9/x"}, "TIMESCALE_URL"),
    ("services.replicator", {"REPLICATION_INTERVAL": "soon"}, "REPLICATION_INTERVAL"),
    ("shared.migrate", {"DATABASE_POOL_MAX": "x"}, "DATABASE_POOL_MAX"),
    ("services.optimizer.index_cli analyze", {"DATABASE_TIMEOUT": "-1"}, "DATABASE_TIMEOUT"),
    (
        "services.gateway.event_processor",
        {
            "DATABASE_URL": "postgresql://x@127.0.0.1:9/x",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "CIRCUIT_BREAKER_CONFIG": "/nonexistent/breakers.yaml",
        },
        "/nonexistent/breakers.yaml",
    ),
]


@pytest.fixture(scope="module")
def bad_setting_runs(tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("settings")
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda case: run(case[0], tmp, case[1]), BAD_SETTINGS))


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)), ids=[f"{c}-{s}" for c, _, s in BAD_SETTINGS])
def test_a_bad_or_missing_setting_is_one_line_naming_it(
    case: int, bad_setting_runs: list[subprocess.CompletedProcess[str]]
) -> None:
    command, _, setting = BAD_SETTINGS[case]
    result = bad_setting_runs[case]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert lines[0].startswith(f"python -m {command.split()[0]}: ")
    assert result.stdout == ""  # nothing started, nothing logged


def test_a_secret_setting_value_is_never_echoed(tmp_path: Path) -> None:
    result = run(
        "services.analytics",
        tmp_path,
        {"DATABASE_URL": "postgresql://u:hunter2@h/db", "DATABASE_POOL_MAX": "x"},
    )
    assert result.returncode == 2
    assert "DATABASE_POOL_MAX" in result.stderr
    assert "hunter2" not in result.stderr


def test_an_unknown_benchmark_is_a_one_line_error(tmp_path: Path) -> None:
    result = run("bench no_such_bench", tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "unknown benchmark no_such_bench" in result.stderr
    assert "ingest_throughput" in result.stderr  # says which names exist


def test_a_benchmark_run_reports_progress_on_stderr_and_json_on_stdout(tmp_path: Path) -> None:
    result = run("bench performance_monitor --quick", tmp_path, timeout_s=120)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert "[bench] performance_monitor (1/1) started" in result.stderr
    assert re.search(r"\[bench\] performance_monitor \(1/1\) done in [\d.]+ s", result.stderr)
    assert len(lines) == 1
    assert lines[0].startswith('{"benchmark": "performance_monitor"')


def test_the_heartbeat_says_a_long_run_is_alive(capsys: pytest.CaptureFixture[str]) -> None:
    with heartbeat("slow", interval_s=0.05):
        time.sleep(0.3)
    lines = [line for line in capsys.readouterr().err.splitlines() if "slow: still running" in line]
    assert len(lines) >= 3


def _first_output(command: str, env: dict[str, str], use_pty: bool, timeout_s: float = 30.0) -> str:
    """The first log lines a service writes, on a terminal (a pty) or into a pipe; then stop it."""
    if use_pty:
        parent, child = pty.openpty()
        stdout: int = child
    else:
        parent, stdout = -1, subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", command], env=env, stdout=stdout, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )
    reader = parent if use_pty else proc.stdout.fileno()  # type: ignore[union-attr]
    if use_pty:
        os.close(child)
    out = io.BytesIO()
    deadline = time.monotonic() + timeout_s
    try:
        while b"Uvicorn running" not in out.getvalue() and time.monotonic() < deadline:
            ready, _, _ = select.select([reader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(reader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out.write(chunk)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if use_pty:
            os.close(parent)
        elif proc.stdout is not None:
            proc.stdout.close()
    return out.getvalue().decode(errors="replace")


@pytest.mark.parametrize("use_pty", [True, False], ids=["terminal", "pipe"])
def test_logs_are_readable_on_a_terminal_and_json_otherwise(use_pty: bool) -> None:
    env = clean_env(OPTIMIZER_PORT=str(free_port()))
    output = _first_output("services.optimizer", env, use_pty)
    lines = [line for line in output.splitlines() if line.strip()]
    assert any("Uvicorn running" in line for line in lines), output
    if use_pty:
        assert all(re.match(r"^\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING) ", line) for line in lines), output
    else:
        assert all(line.startswith('{"time": ') for line in lines), output


def test_make_run_tells_its_services_how_to_log() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert child_log_format({}, Terminal()) == "console"
    assert child_log_format({}, io.StringIO()) == "json"
    assert child_log_format({"LOG_FORMAT": "json"}, Terminal()) == "json"
    assert child_log_format({"LOG_FORMAT": "console"}, io.StringIO()) == "console"
