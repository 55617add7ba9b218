"""`python -m tools.env_secrets [.env]`: give every secret of the compose file a random value.

`make up` (and `make .env`) call it. Each secret that the file does not set yet, or sets to an
empty value (as copied from `.env.example`), gets 48 random hex digits; values already there are
kept, so running it again changes nothing. The file is created readable by its owner only.
Hex, because the values end up inside database URLs, where other characters need escaping.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "ADMIN_TOKEN", "API_KEYS", "GRAFANA_ADMIN_PASSWORD")


def fill(path: Path) -> list[str]:
    """Add the missing secrets to `path`; returns the names that were added."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    values = {}
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    missing = [name for name in SECRETS if not values.get(name)]
    if not missing:
        return []
    kept = [line for line in lines if line.partition("=")[0].strip() not in missing]
    added = [f"{name}={secrets.token_hex(24)}" for name in missing]
    text = "\n".join([*kept, *added]) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return missing


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else ".env")
    added = fill(path)
    if added:
        print(f"{path}: random values for {', '.join(added)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
