"""The `X-API-Key` header as an OpenAPI security scheme.

Which keys are valid, and whether one is needed at all (only when API_KEYS is set), is decided
by the route that writes events; this declaration lets `/docs` send the header ("Authorize").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader

api_key_header = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="required to write events when the fleet is configured with API_KEYS",
    auto_error=False,
)

PresentedApiKey = Annotated[str | None, Security(api_key_header)]
