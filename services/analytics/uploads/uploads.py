"""The upload workflow: a CSV file on disk → validated chunks → PostgreSQL, with a report."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.analytics.rollups import holding_refresh_back
from services.analytics.uploads.async_file_processor import AsyncFileProcessor
from services.analytics.uploads.csv_rows import Chunk, Header
from services.analytics.uploads.metrics import UPLOAD_ROWS, UPLOADS_IN_PROGRESS
from shared.breaker import CircuitBreaker
from shared.event_store import copy_event_binary, copy_event_csv
from shared.performance.operation import operation
from shared.performance.realtime import get_realtime_tracker

MAX_LISTED_ERRORS = 1000
UPLOAD_WRITERS = 2  # database connections storing one upload's chunks concurrently


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
    path: str,
    header: Header,
    processor: AsyncFileProcessor,
    pool: asyncpg.Pool,
    breaker: CircuitBreaker,
    *,
    writers: int = UPLOAD_WRITERS,
) -> UploadReport:
    """`_store_upload` timed and traced as `upload.store`; its speed feeds the upload threshold."""
    with operation("upload.store") as span:
        report = await _store_upload(path, header, processor, pool, breaker, writers=writers)
        span.set_attribute("rows_inserted", report.rows_inserted)
        span.set_attribute("rows_rejected", report.rows_rejected)
    get_realtime_tracker().record_upload_speed(report.rows_per_second)
    return report


async def _store_upload(
    path: str,
    header: Header,
    processor: AsyncFileProcessor,
    pool: asyncpg.Pool,
    breaker: CircuitBreaker,
    *,
    writers: int,
) -> UploadReport:
    """Store every valid row of the file while the next chunks are parsed. Each chunk is stored in
    its own transaction (a huge file never holds one long transaction) by one of `writers`
    connections, so PostgreSQL's index updates, the largest cost, use more than one core. Rows
    already stored (same event_id) are counted as duplicates."""
    report = UploadReport()
    started = time.perf_counter()
    rows_seen = 0
    queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=writers)
    direct = True  # COPY straight into the table until a chunk meets rows already stored

    async def write() -> None:
        nonlocal direct
        async with pool.acquire() as conn, holding_refresh_back(conn):
            while (chunk := await queue.get()) is not None:
                with operation("upload.copy", rows=chunk.rows):
                    if chunk.copy_binary is not None:
                        inserted, went_direct = await breaker.call(
                            copy_event_binary, conn, chunk.copy_binary, direct=direct
                        )
                        direct = direct and went_direct
                    elif chunk.copy_csv:
                        inserted = await breaker.call(copy_event_csv, conn, chunk.copy_csv)
                    else:
                        continue
                report.rows_inserted += inserted
                report.rows_duplicate += chunk.rows - inserted
                UPLOAD_ROWS.inc(inserted)

    UPLOADS_IN_PROGRESS.inc()
    tasks = [asyncio.create_task(write()) for _ in range(max(1, writers))]
    try:
        chunks = processor.iter_chunks(path, header, want_frame=False, want_copy=True)
        while True:
            # Parsing and validation are one pass over the chunk (in a worker), so one span.
            with operation("upload.parse_validate") as parse_span:
                chunk = await anext(chunks, None)
                if chunk is not None:
                    parse_span.set_attribute("rows", chunk.rows)
                    parse_span.set_attribute("rejected", len(chunk.errors))
            if chunk is None:
                break
            report.chunks += 1
            rows_seen += chunk.rows + len(chunk.errors)
            report.rows_rejected += len(chunk.errors)
            room = MAX_LISTED_ERRORS - len(report.errors)
            if room > 0:
                report.errors.extend(chunk.errors[:room])
            if chunk.rows:
                await _put(queue, chunk, tasks)
        for _ in tasks:
            await _put(queue, None, tasks)
        await asyncio.gather(*tasks)
    finally:
        UPLOADS_IN_PROGRESS.dec()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    report.errors.sort(key=lambda e: e["line"])
    report.seconds = round(time.perf_counter() - started, 3)
    report.rows_per_second = round(rows_seen / report.seconds, 1) if report.seconds > 0 else float(rows_seen)
    return report


async def _put(
    queue: asyncio.Queue[Chunk | None], item: Chunk | None, writers: list[asyncio.Task[None]]
) -> None:
    """Queue `item` for the writers. If a writer fails meanwhile, its error is raised here instead
    of waiting forever for room in the queue."""
    put = asyncio.ensure_future(queue.put(item))
    alive = {task for task in writers if not task.done()}
    try:
        while not put.done():
            if not alive:
                # All of them failed before this chunk: the first one's error is the answer
                # (a database that cannot be reached is a 503, not an internal error).
                for task in writers:
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error
                raise RuntimeError("every database writer of the upload has stopped")
            done, _ = await asyncio.wait([put, *alive], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {put}:
                alive.discard(task)
                task.result()  # a writer that failed raises its error here
    finally:
        if not put.done():
            put.cancel()
