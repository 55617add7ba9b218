"""`POST /api/v1/uploads`: a multipart CSV streamed to a spool file, then stored in chunks.

The spool is `UPLOAD_SPOOL_DIR` (the system temp dir when unset) and a file may hold at most
`UPLOAD_MAX_BYTES`: the limit is checked on every piece as it arrives, so a larger upload is
refused with 413 after at most the limit was written. When the spool's file system is full
the answer is 507 Insufficient Storage (with `Retry-After`): the server, not the client's
file, is at fault, so 413 would send the client to split a file that is within the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.analytics.deps import Pool, Service, Settings, Tuning, Workers
from services.analytics.responses import UploadReport
from services.analytics.tuning import AnalyticsTuning
from services.analytics.uploads.async_file_processor import AsyncFileProcessor
from services.analytics.uploads.csv_rows import HeaderError
from services.analytics.uploads.uploads import store_upload
from services.analytics.worker_pool import WorkerPool
from shared.api_keys import ApiKey
from shared.errors import ApiError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["uploads"])

# Declared for the OpenAPI document only: the multipart body is streamed to disk by hand below,
# so that a large file never sits in memory.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "the CSV file: a header line, then one access event per row",
                        }
                    },
                }
            }
        },
    }
}

CSV_TYPES = {
    "text/csv",
    "application/csv",
    "text/plain",
    "application/vnd.ms-excel",
    "text/x-csv",
    "application/octet-stream",
    "",
}


class _FilePart:
    """Collects the first file part of a multipart body into a temporary file as it arrives."""

    def __init__(self, fh: Any, max_bytes: int) -> None:
        self.fh = fh
        self.max_bytes = max_bytes
        self.size = 0
        self.filename: str | None = None
        self.content_type = ""
        self.found = False
        self.in_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.buffer: list[bytes] = []

    def callbacks(self) -> dict[str, Any]:
        def on_part_begin() -> None:
            self._headers = {}

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._header_value += data[start:end]

        def on_header_end() -> None:
            self._headers[self._header_field.lower()] = self._header_value
            self._header_field = self._header_value = b""

        def on_headers_finished() -> None:
            _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
            filename = options.get(b"filename")
            self.in_file = filename is not None and not self.found
            if self.in_file:
                self.found = True
                self.filename = (filename or b"").decode("utf-8", "replace")
                self.content_type = (
                    self._headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
                )

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if self.in_file:
                self.size += end - start
                if self.size > self.max_bytes:
                    raise ApiError(
                        413,
                        f"the file is larger than the limit of {self.max_bytes} bytes",
                        details={"max_bytes": self.max_bytes},
                    )
                self.buffer.append(bytes(data[start:end]))

        def on_part_end() -> None:
            self.in_file = False

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        }


async def _receive_file(request: Request, path: str, max_bytes: int) -> _FilePart:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415,
            "send the CSV as multipart/form-data with a `file` field",
            details={"content_type": request.headers.get("content-type")},
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise ApiError(
            413,
            f"the upload is larger than the limit of {max_bytes} bytes",
            details={"max_bytes": max_bytes, "content_length": int(declared)},
        )
    with open(path, "wb") as fh:  # noqa: ASYNC230 - opening a local temp file; writes go to a thread
        part = _FilePart(fh, max_bytes)
        parser = MultipartParser(params[b"boundary"], part.callbacks())  # type: ignore[arg-type]
        try:
            async for data in request.stream():
                parser.write(data)
                if part.buffer:
                    pieces, part.buffer = part.buffer, []
                    await asyncio.to_thread(fh.writelines, pieces)
            parser.finalize()
        except MultipartParseError as exc:
            raise ApiError(
                400,
                f"the multipart/form-data body is malformed: {exc}",
                code="malformed_multipart",
                details={"offset": getattr(exc, "offset", None)},
            ) from None
    if not part.found:
        raise ApiError(422, "no file in the upload: send the CSV in a multipart field named `file`")
    return part


_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _spool_error(exc: OSError) -> ApiError:
    """The answer for a spool that failed under an upload; the path stays in the log."""
    log.error("upload spool failed: %s", exc)
    if exc.errno in _SPACE_ERRNOS:
        return ApiError(
            507,
            "the server has no room to spool this upload now; retry later",
            code="spool_full",
            headers={"Retry-After": "60"},
        )
    return ApiError(
        503,
        "the upload spool is unavailable; retry later",
        code="spool_unavailable",
        headers={"Retry-After": "5"},
    )


def _spool_file(directory: Path | None) -> str:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="upload-", suffix=".csv", dir=directory)
    os.close(fd)
    return path


def _processor(tuning: AnalyticsTuning, workers: WorkerPool) -> AsyncFileProcessor:
    return AsyncFileProcessor(
        workers, chunk_size=lambda: tuning.chunk_size, max_memory_mb=tuning.max_memory_mb
    )


@router.post(
    "/uploads",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    response_model=UploadReport,
    responses={
        401: {"description": "API keys are configured and X-API-Key is missing"},
        403: {"description": "API keys are configured and X-API-Key is not one of them"},
        413: {"description": "file larger than UPLOAD_MAX_BYTES"},
        415: {"description": "not a CSV"},
        422: {"description": "empty file or missing required columns"},
        503: {"description": "the database or the upload spool cannot be used now; retry after Retry-After"},
        507: {"description": "the upload spool (UPLOAD_SPOOL_DIR) is full; retry later"},
    },
)
async def upload_csv(
    request: Request,
    settings: Settings,
    tuning: Tuning,
    workers: Workers,
    pool: Pool,
    service: Service,
    _: ApiKey,
) -> JSONResponse:
    """Store the access events of a CSV file. Each bad row is reported with the file line on which it
    starts (header = line 1) and the reason; good rows are stored; re-uploads store nothing twice."""
    try:
        path = await asyncio.to_thread(_spool_file, settings.upload_spool_dir)
    except OSError as exc:
        raise _spool_error(exc) from None
    try:
        try:
            part = await _receive_file(request, path, settings.upload_max_bytes)
        except OSError as exc:
            raise _spool_error(exc) from None
        name = (part.filename or "").lower()
        if (
            part.content_type not in CSV_TYPES
            or not name.endswith((".csv", ".txt", ""))
            or ("." in name and not name.endswith((".csv", ".txt")))
        ):
            raise ApiError(
                415,
                f"{part.filename!r} ({part.content_type or 'no type'}) is not a CSV file",
                details={"filename": part.filename, "content_type": part.content_type},
            )
        if part.size == 0:
            raise ApiError(422, "the file is empty: expected a header line and rows", code="empty_file")
        with open(path, "rb") as fh:  # noqa: ASYNC230 - 4 KiB from a local file
            head = fh.read(4096)
        if b"\x00" in head:
            raise ApiError(
                415, f"{part.filename!r} is binary, not a CSV file", details={"filename": part.filename}
            )
        processor = _processor(tuning, workers)
        try:
            header = await processor.read_header(path)
        except HeaderError as exc:
            raise ApiError(422, str(exc), code="invalid_header", details=exc.details) from None
        report = await store_upload(path, header, processor, pool, service.db)
        if report.rows_inserted + report.rows_duplicate + report.rows_rejected == 0:
            raise ApiError(422, "the file has a header but no rows", code="empty_file")
        body = UploadReport.model_validate(report.as_dict()).model_dump(mode="json")
        return JSONResponse(body, status_code=201)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
