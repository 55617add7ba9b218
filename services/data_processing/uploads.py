"""The upload workflow: a CSV file on disk → validated chunks → PostgreSQL, with a report."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.data_processing.async_file_processor import AsyncFileProcessor
from services.data_processing.csv_rows import Header
from shared.breaker import CircuitBreaker
from shared.event_store import copy_event_csv

MAX_LISTED_ERRORS = 1000


@dataclass
class UploadReport:
    upload_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    rows_inserted: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    rows_per_second: float = 0.0
    chunks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id,
            "rows_inserted": self.rows_inserted,
            "rows_rejected": self.rows_rejected,
            "errors": self.errors,
            "errors_truncated": self.rows_rejected > len(self.errors),
            "rows_per_second": self.rows_per_second,
            "rows_duplicate": self.rows_duplicate,
            "chunks": self.chunks,
            "seconds": self.seconds,
        }


async def store_upload(
    path: str, header: Header, processor: AsyncFileProcessor, pool: asyncpg.Pool, breaker: CircuitBreaker
) -> UploadReport:
    """Store every valid row of the file (each chunk in its own transaction: a huge file never
    holds one long transaction); rows already stored (same event_id) are counted as duplicates."""
    report = UploadReport()
    started = time.perf_counter()
    rows_seen = 0
    async with pool.acquire() as conn:
        async for chunk in processor.iter_chunks(path, header, want_frame=False, want_copy=True):
            report.chunks += 1
            rows_seen += chunk.rows + len(chunk.errors)
            report.rows_rejected += len(chunk.errors)
            room = MAX_LISTED_ERRORS - len(report.errors)
            if room > 0:
                report.errors.extend(chunk.errors[:room])
            if chunk.copy_csv:
                inserted = await breaker.call(copy_event_csv, conn, chunk.copy_csv)  # type: ignore[arg-type]
                report.rows_inserted += inserted
                report.rows_duplicate += chunk.rows - inserted
    report.seconds = round(time.perf_counter() - started, 3)
    report.rows_per_second = round(rows_seen / report.seconds, 1) if report.seconds > 0 else float(rows_seen)
    return report
