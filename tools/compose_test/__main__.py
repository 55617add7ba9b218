"""`make compose-test`: the compose deployment end to end, on podman, through the gateway's port.

Steps, each timed: build the images here (Debian root filesystems with mmdebstrap, stand-ins for
the public server images, the fleet's image offline from the wheelhouse); `docker-compose up`
(the real Compose v2 binary) against podman's Docker-compatible socket; then the user's path
through the published gateway port only: every service healthy, a batch of events ingested and
counted by the summary, `GET /breaker`, a CSV upload, the replica caught up, Prometheus with
every fleet target, both exporters and Alertmanager up, analytics stopped (the breaker opens, stale answers
are served), `down` and `up` again with the data still there. Whatever happens, every
container, network and volume of the run's project is removed and the podman service stopped.

There is no systemd here, so nothing runs container healthchecks on their interval: a thread
runs `podman healthcheck run` for every container of the project once a second, which is what
`depends_on: condition: service_healthy` waits on.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from shared.settings import REPO_ROOT
from tools.compose_test import images
from tools.dev.embedded import free_port

T = TypeVar("T")
COMPOSE = Path(sys.executable).parent / "docker-compose"
FLEET_SERVICES = ("gateway", "analytics", "optimizer", "replicator")
# What the run starts: the default profile's fleet and servers, and from `observability` what can
# be built here (Grafana and Jaeger cannot; nothing the path checks needs them).
SERVICES = (*FLEET_SERVICES, "prometheus", "alertmanager", "postgres-exporter", "redis-exporter")
PROMETHEUS_JOBS = {*FLEET_SERVICES, "postgres", "redis", "alertmanager"}
EVENTS = 200
CSV_ROWS = 150


class StepFailed(AssertionError):
    pass


class Timings:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.steps: list[tuple[str, float, str]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        notes: list[str] = []
        began = time.monotonic()
        print(f"-> {name}", flush=True)
        try:
            yield notes
        except BaseException as exc:
            # The note is the failure's first line; main() prints the whole of it.
            first = describe(exc).splitlines()[0]
            self.record(name, began, "; ".join(["FAILED: " + first[:300], *notes]))
            raise
        self.record(name, began, "; ".join(notes))

    def record(self, name: str, began: float, note: str) -> None:
        elapsed = time.monotonic() - began
        self.steps.append((name, elapsed, note))
        print(f"   {elapsed:7.1f} s  {name}{'  (' + note + ')' if note else ''}", flush=True)

    def report(self) -> None:
        total = time.monotonic() - self.started
        print("\ncompose test timings")
        for name, elapsed, note in self.steps:
            print(f"  {elapsed:7.1f} s  {name}{'  (' + note + ')' if note else ''}")
        print(f"  {total:7.1f} s  total")


def describe(exc: BaseException) -> str:
    """The exception's type and message; its repr when the message is empty (httpx's timeouts
    and several aiohttp errors have an empty str())."""
    text = str(exc)
    return f"{type(exc).__name__}: {text if text.strip() else repr(exc)}"


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 1.0) -> T:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (httpx.HTTPError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            result, last = None, exc
        if result is not None and result is not False:
            return result
        time.sleep(interval_s)
    raise StepFailed(f"{what}: not reached in {timeout_s:.0f} s (last: {last!r})")


class Podman:
    """`podman system service` on a socket of its own, for the run's lifetime."""

    def __init__(self, workdir: Path) -> None:
        self.socket = workdir / "podman.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Podman:
        self.process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a signal to the run's process group (a CI job cancelled) must
            # leave the API up for the clean-up's `compose down`; __exit__ stops it after that.
            start_new_session=True,
        )
        wait_for("podman API socket", lambda: self.socket.exists(), timeout_s=30, interval_s=0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


class Project:
    """One Compose project: its env file, its command line, its containers' healthchecks."""

    def __init__(self, name: str, env_file: Path, podman: Podman) -> None:
        self.name = name
        self.env_file = env_file
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_HOST": f"unix://{podman.socket}",
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def compose(self, *args: str, timeout_s: float = 300, check: bool = True) -> str:
        command = [
            str(COMPOSE), "-f", str(REPO_ROOT / "docker-compose.yml"), "--project-name", self.name,
            "--env-file", str(self.env_file), "--profile", "observability", *args,
        ]  # fmt: skip
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [""]
            raise StepFailed(
                f"docker-compose {' '.join(args)}: exit {result.returncode}: {lines[-1]}\n"
                + "\n".join(lines[-40:])
            )
        return result.stdout

    def containers(self) -> list[str]:
        out = subprocess.run(
            ["podman", "ps", "--filter", f"label=com.docker.compose.project={self.name}",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
        return [line for line in out.split() if line]

    def health(self) -> dict[str, str]:
        """Health of each running container of the project ('' when it has no healthcheck)."""
        names = self.containers()
        if not names:
            return {}
        out = subprocess.run(
            ["podman", "inspect", "--format", "{{.Name}} {{.State.Health.Status}}", *names],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
        return {
            parts[0]: (parts[1] if len(parts) > 1 else "")
            for parts in (line.split() for line in out.splitlines())
        }

    def _drive_healthchecks(self) -> None:
        while not self._stop.is_set():
            for name in self.containers():
                if self._stop.is_set():
                    break
                subprocess.run(
                    ["podman", "healthcheck", "run", name],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False,
                )  # fmt: skip
            self._stop.wait(1.0)

    def __enter__(self) -> Project:
        self._thread = threading.Thread(target=self._drive_healthchecks, name="healthchecks", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    def dump_logs(self, services: tuple[str, ...], lines: int = 80) -> None:
        """The last lines of each service's containers, on stderr: what a failed step needs."""
        names = subprocess.run(
            ["podman", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.name}",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.split()  # fmt: skip
        for name in names:
            if not any(name == f"{self.name}-{s}-1" for s in services):
                continue
            logs = subprocess.run(
                ["podman", "logs", "--tail", str(lines), name],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            print(f"\n--- last {lines} log lines of {name} ---", file=sys.stderr)
            print(logs.stdout + logs.stderr, file=sys.stderr, flush=True)

    def remove_everything(self) -> list[str]:
        """Containers, networks and volumes labelled with the project, whatever state they are in."""
        leftovers: list[str] = []
        with contextlib.suppress(StepFailed, subprocess.SubprocessError):
            self.compose(
                "down", "--volumes", "--remove-orphans", "--timeout", "10", timeout_s=180, check=False
            )
        label = f"label=com.docker.compose.project={self.name}"
        for kind, listing in (
            ("container", ["podman", "ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
            ("network", ["podman", "network", "ls", "--filter", label, "--format", "{{.Name}}"]),
            ("volume", ["podman", "volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
        ):
            names = subprocess.run(
                listing, capture_output=True, text=True, timeout=60, check=False
            ).stdout.split()
            if names:
                leftovers += [f"{kind} {n}" for n in names]
                remove = ["podman", kind, "rm", "--force", *names]
                subprocess.run(remove, capture_output=True, timeout=120, check=False)
        return leftovers


def write_env_file(
    path: Path, built: dict[str, str], fleet_image: str, gateway_port: int, prometheus_port: int
) -> dict[str, str]:
    values = {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "REDIS_PASSWORD": secrets.token_hex(16),
        "ADMIN_TOKEN": secrets.token_hex(16),
        "API_KEYS": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
        "GATEWAY_PORT": str(gateway_port),
        "PROMETHEUS_PORT": str(prometheus_port),
        "ALERTMANAGER_PORT": str(free_port()),
        # No Jaeger here: spans would only be export errors.
        "TRACING_ENABLED": "false",
        "FLEET_IMAGE": fleet_image.rsplit(":", 1)[0],
        "FLEET_IMAGE_TAG": fleet_image.rsplit(":", 1)[1],
        "POSTGRES_IMAGE": built["postgres"],
        "TIMESCALE_IMAGE": built["postgres"],
        "KAFKA_IMAGE": built["kafka"],
        "REDIS_IMAGE": built["redis"],
        "PROMETHEUS_IMAGE": built["prometheus"],
        "ALERTMANAGER_IMAGE": built["alertmanager"],
        "POSTGRES_EXPORTER_IMAGE": built["postgres-exporter"],
        "REDIS_EXPORTER_IMAGE": built["redis-exporter"],
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return values


def event_batch(count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "event_id": str(uuid.uuid4()),
            "timestamp": (now - timedelta(seconds=count - i)).isoformat(),
            "person_id": f"p{i % 17}",
            "door_id": f"d{i % 5}",
            "access_result": "Granted" if i % 4 else "Denied",
            "facility_id": "compose-test",
        }
        for i in range(count)
    ]


def csv_upload(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["event_id", "timestamp", "person_id", "door_id", "access_result", "facility_id"])
    now = datetime.now(UTC)
    for i in range(rows):
        writer.writerow(
            [
                str(uuid.uuid4()),
                (now - timedelta(minutes=i)).isoformat(),
                f"u{i % 9}",
                f"d{i % 3}",
                "Granted",
                "compose-test",
            ]
        )
    return out.getvalue().encode()


def prometheus_text(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def build_images(notes: list[str]) -> tuple[dict[str, str], str]:
    """The stand-ins (on the servers' root filesystem) and the fleet's image (on the Python root
    filesystem, from the wheelhouse): two chains that share nothing, built at the same time.
    Each part's own time goes into `notes`."""

    def timed(name: str, build: Callable[[], T]) -> T:
        began = time.monotonic()
        result = build()
        notes.append(f"{name} {time.monotonic() - began:.0f} s")
        return result

    def standins() -> dict[str, str]:
        timed("servers root filesystem", lambda: images.rootfs_image(images.SERVERS))
        return timed("stand-in images", images.standin_images)

    def fleet() -> str:
        with ThreadPoolExecutor(2) as pool:
            base = pool.submit(timed, "Python root filesystem", lambda: images.rootfs_image(images.PYTHON))
            wheels = pool.submit(timed, "wheelhouse", images.build_wheelhouse)
            python_base = base.result()
            wheels.result()
        return timed(
            "fleet image (offline)",
            lambda: images.fleet_image(python_base, "localhost/sentinel-fleet:compose-test"),
        )

    with ThreadPoolExecutor(2) as pool:
        servers = pool.submit(standins)
        fleet_image = pool.submit(fleet)
        return servers.result(), fleet_image.result()


def run(timings: Timings, workdir: Path) -> None:
    with timings.step("images and wheelhouse, built side by side") as notes:
        built, fleet_image = build_images(notes)

    gateway_port, prometheus_port = free_port(), free_port()
    project_name = f"sentinel-ct-{secrets.token_hex(3)}"
    env_file = workdir / "compose.env"
    env = write_env_file(env_file, built, fleet_image, gateway_port, prometheus_port)
    gateway = f"http://127.0.0.1:{gateway_port}"
    key = {"X-API-Key": env["API_KEYS"]}
    http = httpx.Client(timeout=30)

    with Podman(workdir) as podman:
        project = Project(project_name, env_file, podman)
        try:
            with project:
                exercise(timings, project, http, gateway, key, prometheus_port)
        except BaseException:
            # Before clean-up removes them: the containers' own account of the failure.
            with contextlib.suppress(Exception):
                project.dump_logs(("gateway", "analytics"))
            raise
        finally:
            # The clean-up is bounded by its own commands' timeouts; a second signal or the
            # bound must not cut it short.
            signal.alarm(0)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            with timings.step(
                "clean up: compose down -v, then anything left with the project's label"
            ) as notes:
                leftovers = project.remove_everything()
                notes.append(f"removed by label: {leftovers}" if leftovers else "nothing left over")
            http.close()


def exercise(
    timings: Timings,
    project: Project,
    http: httpx.Client,
    gateway: str,
    key: dict[str, str],
    prometheus_port: int,
) -> None:
    with timings.step("compose up (migrate, then every service healthy)") as notes:
        project.compose("up", "--detach", "--no-build", *SERVICES, timeout_s=600)
        expected = {f"{project.name}-{s}-1" for s in SERVICES} | {
            f"{project.name}-{s}-1" for s in ("postgres", "timescaledb", "kafka", "redis")
        }

        def all_healthy() -> dict[str, str] | None:
            health = project.health()
            return health if expected <= {n for n, s in health.items() if s == "healthy"} else None

        health = wait_for("every container healthy", all_healthy, timeout_s=300)
        notes.append(f"{len(health)} containers healthy")
        ready = http.get(f"{gateway}/ready")
        if ready.status_code != 200:
            raise StepFailed(f"gateway /ready: {ready.status_code} {ready.text}")

    batch = event_batch(EVENTS)
    summary_url = f"{gateway}/api/v1/analytics/summary?facility_id=compose-test"
    with timings.step(f"POST /api/v1/events ({EVENTS} events), summary through the gateway counts them"):
        refused = http.post(f"{gateway}/api/v1/events", json=batch[:1])
        if refused.status_code != 401:
            raise StepFailed(f"ingest without a key: {refused.status_code}, expected 401")
        answer = http.post(f"{gateway}/api/v1/events", json=batch, headers=key)
        if answer.status_code != 202 or answer.json().get("accepted") != EVENTS:
            raise StepFailed(f"ingest: {answer.status_code} {answer.text}")
        wait_for(
            "summary counts the batch",
            lambda: http.get(summary_url).json()["total_events"] == EVENTS,
            timeout_s=60,
        )

    with timings.step("GET /breaker") as notes:
        breakers = http.get(f"{gateway}/breaker").json()
        if breakers["analytics"]["state"] != "closed":
            raise StepFailed(f"analytics breaker: {breakers['analytics']}")
        notes.append(", ".join(f"{name}={b['state']}" for name, b in breakers.items() if "state" in b))

    with timings.step(f"CSV upload through the gateway ({CSV_ROWS} rows)") as notes:
        upload = http.post(
            f"{gateway}/api/v1/uploads",
            files={"file": ("events.csv", csv_upload(CSV_ROWS), "text/csv")},
            headers=key,
            timeout=120,
        )
        if upload.status_code != 201 or upload.json()["rows_inserted"] != CSV_ROWS:
            raise StepFailed(f"upload: {upload.status_code} {upload.text}")
        notes.append(f"{upload.json()['rows_per_second']:.0f} rows/s")
        wait_for(
            "summary counts the upload",
            lambda: http.get(summary_url).json()["total_events"] == EVENTS + CSV_ROWS,
            timeout_s=60,
        )

    with timings.step("Redis tier with its password; the optimizer reads tuning with ADMIN_TOKEN") as notes:
        tiers = http.get(f"{gateway}/api/v1/cache/report").json()["tiers"]
        if not tiers["l2"]["available"] or not tiers["l2"]["entries"]:
            raise StepFailed(f"the Redis tier is not in use: {tiers['l2']}")
        notes.append(f"l2 entries={tiers['l2']['entries']}")

        def tuning_read() -> dict[str, str] | None:
            services = http.get(f"{gateway}/api/v1/optimizer/status").json()["services"]
            sources = {name: str(entry["source"]) for name, entry in services.items()}
            return sources if sources and all(s == "GET /admin/tuning" for s in sources.values()) else None

        sources = wait_for("optimizer read every service's tuning", tuning_read, timeout_s=60)
        notes.append(", ".join(sorted(sources)))

    with timings.step("replica caught up (replicator metrics, read inside the compose network)") as notes:
        fetch = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://replicator:8004/metrics', timeout=5).read().decode())"
        )

        def caught_up() -> tuple[float, float] | None:
            text = project.compose("exec", "-T", "gateway", "python", "-c", fetch, timeout_s=60)
            lag = prometheus_text(text, "replication_lag_seconds")
            backlog = prometheus_text(text, "replication_backlog_seconds")
            rows = prometheus_text(text, "replication_rows_total")
            return (lag, backlog) if backlog == 0 and rows >= EVENTS + CSV_ROWS else None

        lag, backlog = wait_for("replica caught up", caught_up, timeout_s=90, interval_s=2)
        notes.append(f"replication_lag_seconds={lag:.1f}, replication_backlog_seconds={backlog:.0f}")

    with timings.step("Prometheus: every fleet target, both exporters and Alertmanager up") as notes:

        def targets_up() -> dict[str, str] | None:
            data = http.get(f"http://127.0.0.1:{prometheus_port}/api/v1/targets").json()["data"]
            health = {t["labels"]["job"]: t["health"] for t in data["activeTargets"]}
            return health if all(health.get(job) == "up" for job in PROMETHEUS_JOBS) else None

        health = wait_for("targets up", targets_up, timeout_s=90, interval_s=2)
        notes.append(", ".join(f"{job}={state}" for job, state in sorted(health.items())))
        # Alerts have somewhere to go.
        managers = http.get(f"http://127.0.0.1:{prometheus_port}/api/v1/alertmanagers").json()["data"]
        urls = [m["url"] for m in managers["activeAlertmanagers"]]
        if not any(":9093/" in url for url in urls):
            raise StepFailed(f"Prometheus sends alerts nowhere: {managers}")
        notes.append(f"alerts to {', '.join(urls)}")

    with timings.step("stop analytics: the gateway's breaker opens and serves stale answers") as notes:
        http.get(summary_url)  # the answer the gateway keeps
        project.compose("stop", "--timeout", "10", "analytics", timeout_s=60)

        def opened() -> bool:
            answer = http.get(summary_url)
            state = http.get(f"{gateway}/breaker").json()["analytics"]["state"]
            if answer.status_code == 200 and answer.headers.get("x-cache") == "stale":
                notes.append("stale answer 200") if "stale answer 200" not in notes else None
            return state == "open" and "stale answer 200" in notes

        wait_for("breaker open with stale answers", opened, timeout_s=60, interval_s=0.5)
        stale = http.get(summary_url)
        if stale.json()["total_events"] != EVENTS + CSV_ROWS:
            raise StepFailed(f"stale answer: {stale.text}")
        notes.append("analytics breaker open")
        project.compose("start", "analytics", timeout_s=120)

    with timings.step("compose down, up again: the data is still there (named volumes)"):
        project.compose("down", "--timeout", "10", timeout_s=180)
        if project.containers():
            raise StepFailed(f"containers left after down: {project.containers()}")
        project.compose("up", "--detach", "--no-build", *FLEET_SERVICES, timeout_s=600)
        wait_for("gateway ready", lambda: http.get(f"{gateway}/ready").status_code == 200, timeout_s=180)
        wait_for(
            "summary after restart",
            lambda: http.get(summary_url).json()["total_events"] == EVENTS + CSV_ROWS,
            timeout_s=60,
        )


class Stopped(BaseException):
    """The run's bound passed, or a signal asked it to stop: clean up, then fail."""


def _stop_on(signum: int, _frame: object) -> None:
    if signum == signal.SIGALRM:
        raise Stopped("its time bound passed")
    raise Stopped(f"{signal.Signals(signum).name} received")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compose_test", description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=int, default=1500, help="bound on the whole run in seconds")
    args = parser.parse_args(argv)
    timings = Timings()
    # The bound and a CI job's SIGTERM both end the run through `Stopped`, so the clean-up in
    # `run`'s `finally` still removes every container, network and volume of the project.
    for signum in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop_on)
    signal.alarm(args.timeout)
    status = 1
    try:
        with tempfile.TemporaryDirectory(prefix="sentinel-compose-test-") as tmp:
            run(timings, Path(tmp))
        status = 0
    except Stopped as exc:
        print(f"compose test STOPPED: {exc} (bound {args.timeout} s)", file=sys.stderr)
    except Exception as exc:
        # Every failure with its type: an httpx timeout's str() is empty.
        print(f"compose test FAILED: {describe(exc)}", file=sys.stderr)
        if not isinstance(exc, StepFailed):
            traceback.print_exc()
    finally:
        signal.alarm(0)
        timings.report()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
