"""`make .env`: every compose secret gets a random value once; what is there is kept."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from tools.env_secrets import SECRETS, fill


def _values(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#"
    )


def test_a_new_file_gets_every_secret_readable_by_its_owner_only(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    assert fill(env) == list(SECRETS)
    values = _values(env)
    assert set(values) == set(SECRETS)
    for value in values.values():
        # URL-safe (they sit inside database URLs) and long enough not to be guessed.
        assert re.fullmatch(r"[0-9a-f]{48}", value)
    assert len(set(values.values())) == len(SECRETS)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_existing_values_and_other_lines_are_kept_and_empty_ones_filled(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# mine\nGATEWAY_PORT=9999\nADMIN_TOKEN=chosen-by-me\nPOSTGRES_PASSWORD=\n")
    added = fill(env)
    assert "ADMIN_TOKEN" not in added
    assert "POSTGRES_PASSWORD" in added
    values = _values(env)
    assert values["ADMIN_TOKEN"] == "chosen-by-me"
    assert values["GATEWAY_PORT"] == "9999"
    assert len(values["POSTGRES_PASSWORD"]) == 48
    assert env.read_text().startswith("# mine\n")
    assert env.read_text().count("POSTGRES_PASSWORD=") == 1
    before = env.read_text()
    assert fill(env) == []
    assert env.read_text() == before


def test_the_compose_file_asks_for_exactly_these_secrets() -> None:
    from shared.settings import REPO_ROOT

    text = (REPO_ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert required == set(SECRETS)
