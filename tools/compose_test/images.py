"""The images the compose test runs, built on this machine from Debian packages and a wheelhouse.

No registry is needed: two root filesystems come from `mmdebstrap` (one with Python for the
fleet's image, one with the servers the stand-ins run) and are imported with `podman import`;
the stand-ins are thin Containerfiles on top (deploy/images/); the fleet's image is
deploy/Dockerfile built with `--network=none` from the wheelhouse. Everything is keyed by a hash
of its inputs and kept (tarballs under .data/compose/, images in podman's storage), so a second
run rebuilds only what changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.settings import REPO_ROOT

CACHE_DIR = REPO_ROOT / ".data" / "compose"
IMAGES_DIR = REPO_ROOT / "deploy" / "images"
WHEELHOUSE = REPO_ROOT / "deploy" / "wheelhouse"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Leave out what no container reads: documentation, manual pages, translations.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


@dataclass(frozen=True)
class RootFs:
    name: str
    packages: tuple[str, ...]
    # Shell run in the finished root filesystem ($1) before it is packed.
    customize: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return _digest(json.dumps([SUITE, MIRROR, self.packages, self.customize, DPKG_EXCLUDES]))[:12]

    @property
    def image(self) -> str:
        return f"localhost/sentinel-standin-{self.name}:{self.key}"


PYTHON = RootFs("python", ("python3", "python3-venv", "python-is-python3", "ca-certificates"))
SERVERS = RootFs(
    "base",
    (
        "postgresql-15",
        "redis-server",
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-postgres-exporter",
        "prometheus-redis-exporter",
        "wget",
        "ca-certificates",
    ),
    # The package creates a cluster on install, on whatever port the build machine left free;
    # the stand-in makes its own in the data volume.
    customize=('chroot "$1" pg_dropcluster 15 main',),
)
STANDINS = ("postgres", "redis", "kafka", "prometheus", "alertmanager", "postgres-exporter", "redis-exporter")


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _tree_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            h.update(str(path.relative_to(REPO_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def run(*args: str, timeout_s: float, cwd: Path = REPO_ROOT) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False, timeout=60).returncode == 0


def rootfs_image(fs: RootFs) -> str:
    """The imported root filesystem, made with mmdebstrap when its tarball is not cached."""
    if image_exists(fs.image):
        return fs.image
    tarball = CACHE_DIR / "rootfs" / f"{fs.name}-{fs.key}.tar"
    if not tarball.exists():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        args = [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
            f"--include={','.join(fs.packages)}",
            *(f"--customize-hook={hook}" for hook in fs.customize),
            SUITE,
            str(partial),
            MIRROR,
        ]
        run(*args, timeout_s=900)
        partial.rename(tarball)
    run("podman", "import", "--change", 'CMD ["/bin/bash"]', str(tarball), fs.image, timeout_s=600)
    return fs.image


def standin_images() -> dict[str, str]:
    """Each stand-in image by its directory name under deploy/images/."""
    base = rootfs_image(SERVERS)
    tansu = Path(_tansu_binary())
    out: dict[str, str] = {}
    context = CACHE_DIR / "standin-context"
    for name in STANDINS:
        key = _digest(
            base + _tree_digest(IMAGES_DIR / name) + (_digest(tansu.read_bytes()) if name == "kafka" else "")
        )
        tag = f"localhost/sentinel-standin-{name}:{key[:12]}"
        out[name] = tag
        if image_exists(tag):
            continue
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(IMAGES_DIR / name, context / name)
        if name == "kafka":
            shutil.copy(tansu, context / "kafka" / "tansu")
        run(
            "podman", "build", "--format", "docker", "--network", "none", "--quiet",
            "--from", base, "-f", str(context / name / "Containerfile"), "-t", tag, str(context),
            timeout_s=600,
        )  # fmt: skip
    return out


def _tansu_binary() -> str:
    from tools.dev.embedded import tansu_binary

    return tansu_binary()


def build_wheelhouse(python: str = sys.executable) -> int:
    """Every wheel the image installs into deploy/wheelhouse/: the runtime set of uv.lock (as
    listed, no more), and uv and the build backend the Dockerfile uses."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    WHEELHOUSE.mkdir(exist_ok=True)
    runtime = CACHE_DIR / "runtime.txt"
    run(
        str(Path(python).parent / "uv"), "export", "--frozen", "--no-dev", "--no-emit-project",
        "--no-hashes", "--quiet", "--output-file", str(runtime),
        timeout_s=120,
    )  # fmt: skip
    tooling = CACHE_DIR / "tooling.txt"
    tooling.write_text("\n".join(build_requirements()) + "\n")
    for requirements, deps in ((runtime, ["--no-deps"]), (tooling, [])):
        local = ["--no-index", "--find-links", str(WHEELHOUSE), *deps, "-r", str(requirements)]
        # Complete already? Resolving against the wheelhouse alone takes seconds, pip wheel a minute.
        complete = subprocess.run(
            [python, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", *local],
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
        if complete.returncode != 0:
            run(
                python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELHOUSE),
                "--find-links", str(WHEELHOUSE), *deps, "-r", str(requirements),
                timeout_s=900,
            )  # fmt: skip
    return len(list(WHEELHOUSE.glob("*.whl")))


def build_requirements() -> list[str]:
    """uv (which reads the lock in the build stage) and the build backend, at their pins."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    uv_version = next(
        line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ARG UV_VERSION=")
    )
    return [f"uv=={uv_version}", *project["build-system"]["requires"]]


def _image_id(name: str) -> str | None:
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.stdout.strip() or None if result.returncode == 0 else None


def fleet_image(base: str, tag: str) -> str:
    """deploy/Dockerfile on `base`, with no network: everything comes from the wheelhouse. The
    image the tag named before, when the code changed, is removed (every run would otherwise
    leave one behind); it stays if a container still uses it."""
    previous = _image_id(tag)
    run(
        "podman", "build", "--format", "docker", "--network", "none", "--quiet",
        "--build-arg", f"BASE_IMAGE={base}", "-f", "deploy/Dockerfile", "-t", tag, ".",
        timeout_s=1200,
    )  # fmt: skip
    if previous and previous != _image_id(tag):
        subprocess.run(["podman", "rmi", previous], capture_output=True, timeout=120, check=False)
    return tag


def main(argv: list[str]) -> int:
    if argv != ["wheelhouse"]:
        print("usage: python -m tools.compose_test.images wheelhouse", file=sys.stderr)
        return 2
    count = build_wheelhouse()
    print(f"{WHEELHOUSE.relative_to(REPO_ROOT)}: {count} wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
