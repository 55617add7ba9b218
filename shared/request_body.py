"""Read a request body whole, but never more than a limit: checked while it streams in."""

from __future__ import annotations

from fastapi import Request

from shared.errors import ApiError

__all__ = ["read_body_limited"]


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as the declared length or the bytes received pass `limit`.

    A declared `Content-Length` over the limit is refused before a byte is read; a chunked
    body is refused at the first chunk that passes it, so at most `limit` bytes plus one
    chunk are ever held.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            f"body of {declared} bytes exceeds the limit of {limit} bytes",
            details={"max_bytes": limit},
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes", details={"max_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)
