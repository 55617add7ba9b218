"""Reverse proxy from the gateway to the fleet's services."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from shared.errors import ApiError

router = APIRouter(tags=["proxy"])

# RFC 9110 section 7.6.1: connection-specific headers are not forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})


def _forward_headers(request: Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{prior}, {client}" if prior else client
    headers["x-forwarded-proto"] = request.url.scheme
    headers["x-forwarded-host"] = request.headers.get("host", "")
    return headers


@router.api_route("/api/v1/analytics/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def proxy_analytics(path: str, request: Request) -> Response:
    client: httpx.AsyncClient = request.app.state.http
    base: str = request.app.state.settings.analytics_url
    url = f"{base.rstrip('/')}/api/v1/analytics/{path}"
    try:
        upstream = await client.request(
            request.method, url, params=request.query_params, headers=_forward_headers(request),
            content=await request.body(),
        )
    except httpx.HTTPError as exc:
        raise ApiError(503, f"analytics unavailable: {type(exc).__name__}", code="upstream_unavailable",
                       headers={"Retry-After": "5"}) from None
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
    return Response(upstream.content, status_code=upstream.status_code, headers=headers)
