"""How every Redis client of the fleet connects: address, password and TLS from the settings.

`CACHE_HOST`, `CACHE_PORT`, `CACHE_DATABASE` say where; `CACHE_PASSWORD` authenticates (Redis
`requirepass`, or an ACL user's password with `CACHE_USERNAME`); `CACHE_TLS=true` speaks TLS
(`rediss://`), verifying the server against `CACHE_TLS_CA_FILE` or the system's CAs. The cache
tiers, their invalidation channel and the gateway's shared rate limits all connect this way.
"""

from __future__ import annotations

from typing import Any

from shared.settings import FleetSettings

__all__ = ["cache_redis_url", "redis_connection_options"]


def cache_redis_url(settings: FleetSettings) -> str:
    scheme = "rediss" if settings.cache_tls else "redis"
    return f"{scheme}://{settings.cache_host}:{settings.cache_port}/{settings.cache_database}"


def redis_connection_options(settings: FleetSettings, *, tls: bool | None = None) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis.from_url` / `ConnectionPool.from_url`.

    `tls` says whether the connection uses TLS (default: `CACHE_TLS`); TLS options are only
    given to TLS connections, which are the only ones that accept them. A password written in
    the URL itself takes precedence over these (redis-py's rule).
    """
    options: dict[str, Any] = {}
    if settings.cache_username:
        options["username"] = settings.cache_username
    if settings.cache_password is not None:
        options["password"] = settings.cache_password.get_secret_value()
    if settings.cache_tls if tls is None else tls:
        options["ssl_cert_reqs"] = "required"
        if settings.cache_tls_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.cache_tls_ca_file)
    return options
