"""`X-API-Key` for every request that writes events (ingestion and uploads, on every service).

With `API_KEYS` unset writes are open; with it set, a request without the header is refused
with 401 and one with a key not in the list with 403. The comparison runs over SHA-256
digests of equal length and against every configured key, so neither the length nor the
position of a near match shows in the time taken.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from shared.errors import ApiError
from shared.settings import FleetSettings

HEADER = "X-API-Key"

# Declares the header in OpenAPI (and lets /docs send it); the check itself is below.
_scheme = APIKeyHeader(
    name=HEADER, scheme_name="ApiKey", auto_error=False, description="required when API_KEYS is set"
)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def fingerprint(key: str) -> str:
    """A short stable name of a key, for rate-limit buckets and logs (never the key itself)."""
    return "key:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def authenticate(settings: FleetSettings, presented: str | None) -> str | None:
    """The fingerprint of the presented key when `API_KEYS` is set (401/403 otherwise); None
    when writes are open."""
    keys = settings.api_key_set
    if not keys:
        return None
    if not presented:
        raise ApiError(
            401,
            f"this service requires an API key in the {HEADER} header",
            code="missing_api_key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    offered = _digest(presented)
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(offered, _digest(key))
    if not valid:
        raise ApiError(403, f"the {HEADER} is not valid", code="invalid_api_key")
    return fingerprint(presented)


def require_api_key(request: Request, presented: Annotated[str | None, Depends(_scheme)]) -> str | None:
    settings: FleetSettings = request.app.state.settings
    return authenticate(settings, presented)


# A route parameter of this type makes the route a keyed write: the value is the key's
# fingerprint, or None when API_KEYS is unset.
ApiKey = Annotated[str | None, Depends(require_api_key)]

# The header as sent, unchecked: declares the scheme for a route that authenticates by itself,
# in its own order (ingestion checks the key, then the rate limit, then reads the body).
PresentedApiKey = Annotated[str | None, Depends(_scheme)]
