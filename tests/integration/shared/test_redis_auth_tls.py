"""Every Redis client of the fleet authenticates and speaks TLS when the settings say so:
the cache tiers, their invalidation channel and the gateway's shared rate limits, against a
private redis-server with `requirepass` and a TLS port (certificates made by openssl)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gateway.rate_limit import IngestLimiter
from shared.cache import build_cache_manager
from shared.errors import ApiError
from shared.redis_options import redis_connection_options
from shared.settings import FleetSettings
from tests.integration.gateway.conftest import write_breakers
from tools.dev.embedded import free_port
from tools.dev.servers import start_redis_server, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PASSWORD = "correct horse battery staple"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if shutil.which("openssl") is None:
        unavailable("openssl (to make test certificates)")
    certs = tmp_path_factory.mktemp("redis-tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", "/CN=fleet-test-ca", cwd=certs)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=certs)  # fmt: skip
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "1", "-extfile", "san.ext", cwd=certs)  # fmt: skip
    port = free_port()
    process, _ = start_redis_server(
        port=port,
        extra_args=[
            "--port", "0", "--tls-port", str(port), "--requirepass", PASSWORD,
            "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    try:
        yield port, certs / "ca.crt"
    finally:
        process.terminate()
        process.wait(timeout=10)


def settings_for(port: int, ca: Path, tmp_path: Path, **overrides: object) -> FleetSettings:
    values: dict[str, object] = {
        "CACHE_TYPE": "redis",
        "CACHE_HOST": "127.0.0.1",
        "CACHE_PORT": port,
        "CACHE_PASSWORD": PASSWORD,
        "CACHE_TLS": True,
        "CACHE_TLS_CA_FILE": str(ca),
        "CACHE_KEY_PREFIX": "tls-test",
        # A breaker file of the test's own: the failing variants must not open a shared breaker.
        "CIRCUIT_BREAKER_CONFIG": str(write_breakers(tmp_path)),
    }
    values.update(overrides)
    return FleetSettings(**values)  # type: ignore[arg-type]


async def test_cache_tiers_and_invalidations_use_password_and_tls(
    tls_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_redis
    settings = settings_for(port, ca, tmp_path)
    assert settings.cache_password is not None
    assert PASSWORD not in repr(settings)
    a, b = build_cache_manager(settings), build_cache_manager(settings)
    assert a.l2 is not None
    assert a.l2.url.startswith("rediss://")
    await a.start()
    await b.start()
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert (await a.get_or_compute("t", "t:k", compute, ttl_s=60, tags=("facility:hq",))).value == 1
    shared = await b.get_or_compute("t", "t:k", compute, ttl_s=60, tags=("facility:hq",))
    assert (shared.status, shared.tier, shared.value) == ("hit", "l2", 1)
    await a.invalidate_tags(["facility:hq"])
    for _ in range(100):  # over TLS pub/sub
        if b.invalidations.snapshot()["tags"].get("facility:hq"):
            break
        await asyncio.sleep(0.02)
    assert (await b.get_or_compute("t", "t:k", compute, ttl_s=60, tags=("facility:hq",))).value == 2
    await a.close()
    await b.close()


@pytest.mark.parametrize(
    "overrides",
    [{"CACHE_PASSWORD": "wrong"}, {"CACHE_PASSWORD": ""}, {"CACHE_TLS": False}],
    ids=["wrong-password", "no-password", "no-tls"],
)
async def test_without_the_right_password_or_tls_the_tier_is_unavailable(
    tls_redis: tuple[int, Path], tmp_path: Path, overrides: dict[str, object]
) -> None:
    port, ca = tls_redis
    manager = build_cache_manager(settings_for(port, ca, tmp_path, **overrides))
    assert manager.l2 is not None

    async def compute() -> int:
        return 1

    result = await manager.get_or_compute("t", "t:other", compute, ttl_s=60)
    assert result.status == "miss"  # computed; the tier failed quietly
    assert manager.l2.stats.errors >= 1
    await manager.close()


async def test_the_shared_rate_limit_uses_password_and_tls(
    tls_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_redis
    settings = settings_for(port, ca, tmp_path)
    limiter = IngestLimiter(
        "2/minute",
        None,
        f"async+rediss://127.0.0.1:{port}/0",
        redis_options=lambda tls: redis_connection_options(settings, tls=tls),
    )
    identity = f"ip:tls-{free_port()}"
    try:
        await limiter.hit_request(identity)
        await limiter.hit_request(identity)
        with pytest.raises(ApiError) as refused:
            await limiter.hit_request(identity)
        assert refused.value.status_code == 429
    finally:
        await limiter.aclose()
