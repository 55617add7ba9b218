"""`python -m shared.healthcheck [PORT]`: exit 0 when the fleet service in this container is live.

The image's HEALTHCHECK and the compose file call it. With a port it asks
`http://127.0.0.1:PORT/health`; without one it finds the service the container runs (the
`python -m services.<name>` process) and asks that service's port, so the one image carries one
healthcheck for all of its services. Standard library only: it runs every few seconds and must
start fast.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from shared.settings import FleetSettings

# The module each service is started as, and the settings field holding its port.
PORT_FIELDS = {
    "services.gateway": "gateway_port",
    "services.gateway.event_processor": "event_processor_port",
    "services.analytics": "analytics_port",
    "services.optimizer": "optimizer_port",
    "services.replicator": "replication_metrics_port",
}


def running_service(proc: Path = Path("/proc")) -> str | None:
    """The fleet module a process on this machine (this container) was started with."""
    for cmdline in sorted(proc.glob("[0-9]*/cmdline")):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended while we looked
        for flag, module in itertools.pairwise(args):
            if flag == b"-m" and module.decode(errors="replace") in PORT_FIELDS:
                return module.decode()
    return None


def health_port(port: int | None) -> int | None:
    if port is not None:
        return port
    module = running_service()
    if module is None:
        return None
    found: int = getattr(FleetSettings(), PORT_FIELDS[module])
    return found


def check(port: int, timeout_s: float = 3.0) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/health"  # always http on loopback, never a user's URL
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return isinstance(body, dict) and body.get("status") == "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.healthcheck",
        description="Exit 0 when the fleet service of this container answers /health with status ok.",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=int,
        help="the service's port (default: that of the fleet service running here)",
    )
    args = parser.parse_args(argv)
    port = health_port(args.port)
    if port is None:
        print("no fleet service runs here", file=sys.stderr)
        return 1
    if not check(port):
        print(f"http://127.0.0.1:{port}/health does not answer ok", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
