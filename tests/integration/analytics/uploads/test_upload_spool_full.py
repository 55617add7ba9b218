"""A full spool file system answers 507 with the envelope, and the service keeps serving.

The spool is a real 256 KiB tmpfs, mounted in a private mount namespace (`unshare -rm`) in
which the upload service runs; nothing of the machine's mounts changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tools.dev.embedded import free_port
from tools.dev.servers import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERVER = textwrap.dedent(
    """
    import sys
    import uvicorn
    from services.analytics.app import create_app
    from services.analytics.settings import AnalyticsSettings

    if __name__ == "__main__":  # the worker pool's processes import this file too
        settings = AnalyticsSettings(
            upload_spool_dir=sys.argv[1],
            upload_max_bytes=8 << 20,
            tracing_enabled=False,
            database_url=sys.argv[3],
            analytics_max_workers=1,
            cache_warm_on_start=False,
        )
        uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


def test_a_full_spool_is_507_and_the_service_stays_up(tmp_path: Path, database_url: str) -> None:
    if not _namespaces_work():
        unavailable("a private mount namespace (unshare -rm) for a small tmpfs")
    spool = tmp_path / "spool"
    spool.mkdir()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    command = (
        f'mount -t tmpfs -o size=256k none "{spool}" && '
        f'exec "{sys.executable}" "{script}" "{spool}" {port} "{database_url}"'
    )
    process = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", command],
        cwd=Path(__file__).resolve().parents[4],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[4])},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "the upload service did not start"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rows = b"2025-01-01T12:00:00Z,p1,b1,front,Granted\n" * 25_000  # 1 MB, within the limit
        answer = httpx.post(
            base + "/api/v1/uploads",
            files={
                "file": ("events.csv", b"Timestamp,Person ID,Token ID,Device name,Access result\n" + rows)
            },
            timeout=30,
        )
        assert answer.status_code == 507, answer.text
        error = answer.json()["error"]
        assert error["code"] == "spool_full"
        assert str(spool) not in answer.text
        assert answer.headers["retry-after"] == "60"
        assert httpx.get(base + "/health", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
