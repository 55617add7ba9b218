"""`AsyncFileProcessor`: CSV files as an async stream of validated chunks, within a memory budget.

Parsing and validation run in the analytics worker processes, one chunk ahead of the consumer
(which stores the previous chunk meanwhile). Memory is held under `ANALYTICS_MAX_MEMORY_MB`
by back-pressure, never by failing: the chunk size shrinks to what the budget allows for the
measured bytes per row, and the next chunk is only read ahead while this process's memory
growth leaves room for it; otherwise it waits until the consumer is done with the current one.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pandas as pd
import psutil

from services.analytics.worker_pool import WorkerPool
from services.data_processing.csv_rows import Chunk, Header, estimate_row_bytes, parse_chunk, read_header

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["AsyncFileProcessor", "register_upload_services"]

MIN_CHUNK_ROWS = 1_000


class AsyncFileProcessor:
    def __init__(
        self,
        workers: WorkerPool,
        *,
        chunk_size: int | Callable[[], int] = 50_000,
        max_memory_mb: int = 512,
    ) -> None:
        self.workers = workers
        self._chunk_size = chunk_size
        self.max_memory_bytes = max_memory_mb * 1024 * 1024
        self.smallest_chunk = 0  # the smallest chunk the budget forced, for reports and tests
        self.waits = 0  # times read-ahead was held back for memory

    @property
    def chunk_size(self) -> int:
        return self._chunk_size() if callable(self._chunk_size) else self._chunk_size

    async def read_header(self, path: str) -> Header:
        return await self.workers.run(read_header, path)

    def _rows_within_budget(self, row_bytes: float) -> int:
        # Two chunks are in flight (one stored, one read ahead); keep both within half the
        # budget, leaving the rest for the interpreter, pools and the running analyses.
        budget_rows = int(self.max_memory_bytes / 2 / (2 * row_bytes))
        rows = max(MIN_CHUNK_ROWS, min(self.chunk_size, budget_rows))
        self.smallest_chunk = rows if not self.smallest_chunk else min(self.smallest_chunk, rows)
        return rows

    def _room_for(self, baseline_rss: int, nbytes: float) -> bool:
        growth = psutil.Process().memory_info().rss - baseline_rss
        return growth + nbytes <= self.max_memory_bytes

    async def iter_chunks(
        self, path: str, header: Header | None = None, *, want_frame: bool = True, want_copy: bool = False
    ) -> AsyncIterator[Chunk]:
        """Validated chunks with their per-row errors, in file order."""
        header = header or await self.read_header(path)
        baseline = psutil.Process().memory_info().rss
        row_bytes = 1024.0  # until the first chunk is measured
        offset, line = header.data_offset, header.data_line

        def start(rows: int) -> asyncio.Future[Chunk]:
            return asyncio.ensure_future(
                self.workers.run(
                    parse_chunk, path, header, offset, line, rows, want_frame=want_frame, want_copy=want_copy
                )
            )

        pending: asyncio.Future[Chunk] | None = start(self._rows_within_budget(row_bytes))
        try:
            while pending is not None:
                chunk = await pending
                pending = None
                offset, line = chunk.next_offset, chunk.next_line
                row_bytes = estimate_row_bytes(chunk)
                rows = self._rows_within_budget(row_bytes)
                if not chunk.eof and self._room_for(baseline, rows * row_bytes):
                    pending = start(rows)
                yield chunk
                if not chunk.eof and pending is None:
                    self.waits += 1
                    del chunk
                    gc.collect()
                    pending = start(rows)
        finally:
            if pending is not None:
                pending.cancel()

    async def read_csv_chunks(self, path: str) -> AsyncIterator[pd.DataFrame]:
        """The CSV at `path` as DataFrames of up to ANALYTICS_CHUNK_SIZE validated rows (fewer when
        the memory budget demands), columns of the access event plus `line` (the file line where
        each record starts). `frame.attrs["errors"]` lists the chunk's rejected rows."""
        async for chunk in self.iter_chunks(path, want_frame=True):
            frame = chunk.frame if chunk.frame is not None else pd.DataFrame()
            frame.attrs["errors"] = chunk.errors
            yield frame


def register_upload_services(app: FastAPI) -> None:
    """Add the upload API to the analytics app; the processor is built per upload from the app's
    worker pool and live tuning (chunk size), so `/admin/tuning` changes apply to the next upload."""
    from services.data_processing import routes

    app.include_router(routes.router)
