"""`AsyncFileProcessor`: CSV files as an async stream of validated chunks, within a memory budget.

The file is split at record boundaries (`record_scan.plan_spans`, a fast numpy pass run a block
ahead), and the spans are parsed and validated by the analytics worker processes in parallel
(`arrow_chunks.parse_span`), up to one more span than there are workers in flight, yielded in
file order. From the first record whose quoting only the `csv` module may read (or a span Arrow
cannot decode), the sequential reader of `csv_rows` takes over, which defines the behaviour.

Memory is held under `ANALYTICS_MAX_MEMORY_MB` by back-pressure, never by failing: spans are
sized so that all of them in flight fit in half the budget, and a new span is only started
while this process's memory growth leaves room for it; otherwise it waits until the consumer
is done with the oldest one.
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from collections.abc import AsyncIterator, Callable

import pandas as pd
import psutil

from services.analytics.uploads.arrow_chunks import parse_span
from services.analytics.uploads.csv_rows import Chunk, Header, estimate_row_bytes, parse_chunk, read_header
from services.analytics.uploads.record_scan import Plan, Span, in_flight_bytes, plan_spans
from services.analytics.worker_pool import WorkerPool

__all__ = ["AsyncFileProcessor"]

MIN_CHUNK_ROWS = 1_000
FIRST_BLOCK = 1 << 20  # bytes planned before the first span starts


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
        self.waits = 0  # times a span was held back for memory
        self.sequential_from_line: int | None = None  # where the csv module took over, if it did

    @property
    def chunk_size(self) -> int:
        return self._chunk_size() if callable(self._chunk_size) else self._chunk_size

    @property
    def window(self) -> int:
        """Spans in flight at once: one per worker, plus one ready for the consumer."""
        return self.workers.max_workers + 1

    async def read_header(self, path: str) -> Header:
        return await self.workers.run(read_header, path)

    def _span_budget(self) -> int:
        # All spans in flight share half the budget; the rest is for the interpreter, pools,
        # the database writers' buffers and the running analyses.
        floor: int = in_flight_bytes(0, MIN_CHUNK_ROWS)
        return max(floor, self.max_memory_bytes // 2 // self.window)

    def _note_chunk(self, rows: int) -> None:
        self.smallest_chunk = rows if not self.smallest_chunk else min(self.smallest_chunk, rows)

    def _room_for(self, baseline_rss: int, nbytes: float) -> bool:
        growth = psutil.Process().memory_info().rss - baseline_rss
        return growth + nbytes <= self.max_memory_bytes

    async def iter_chunks(
        self, path: str, header: Header | None = None, *, want_frame: bool = True, want_copy: bool = False
    ) -> AsyncIterator[Chunk]:
        """Validated chunks with their per-row errors, in file order."""
        header = header or await self.read_header(path)
        baseline = psutil.Process().memory_info().rss
        rows = max(MIN_CHUNK_ROWS, self.chunk_size)
        budget = self._span_budget()
        spans: deque[Span] = deque()
        running: deque[tuple[Span, asyncio.Future[Chunk | None]]] = deque()
        planning: asyncio.Future[Plan] | None = asyncio.ensure_future(
            # A small first block, so the first span is parsed and stored while the rest is planned.
            self.workers.run(
                plan_spans, path, header.data_offset, header.data_line, rows, budget, FIRST_BLOCK
            )
        )
        plan: Plan | None = None
        try:
            while True:
                if planning is not None and (planning.done() or not spans):
                    plan = await planning
                    planning = None
                    spans.extend(plan.spans)
                    if not plan.eof and not plan.anomaly:
                        planning = asyncio.ensure_future(
                            self.workers.run(plan_spans, path, plan.next_offset, plan.next_line, rows, budget)
                        )
                while spans and len(running) < self.window:
                    span = spans[0]
                    held = sum(in_flight_bytes(s.end - s.start, s.records) for s, _ in running)
                    if running and not self._room_for(
                        baseline, held + in_flight_bytes(span.end - span.start, span.records)
                    ):
                        self.waits += 1
                        break
                    spans.popleft()
                    self._note_chunk(span.records)
                    running.append(
                        (span, asyncio.ensure_future(self._parse(path, header, span, want_frame, want_copy)))
                    )
                if not running:
                    if planning is None:
                        break
                    continue
                span, future = running.popleft()
                chunk = await future
                if chunk is None:  # Arrow could not read it: the csv module reads the same records
                    chunk = await self.workers.run(
                        parse_chunk,
                        path,
                        header,
                        span.start,
                        span.line,
                        span.records + 1,
                        want_frame=want_frame,
                        want_copy=want_copy,
                        end=span.end,
                    )
                yield chunk
                del chunk
            assert plan is not None  # noqa: S101  type narrowing for mypy; the code above guarantees it
            if plan.anomaly:
                self.sequential_from_line = plan.next_line
                async for chunk in self._sequential(
                    path, header, plan.next_offset, plan.next_line, want_frame, want_copy
                ):
                    yield chunk
        finally:
            for _, future in running:
                future.cancel()
            if planning is not None:
                planning.cancel()

    async def _parse(
        self, path: str, header: Header, span: Span, want_frame: bool, want_copy: bool
    ) -> Chunk | None:
        return await self.workers.run(
            parse_span,
            path,
            header,
            span.start,
            span.end,
            span.line,
            want_frame=want_frame,
            want_copy=want_copy,
        )

    async def _sequential(
        self, path: str, header: Header, offset: int, line: int, want_frame: bool, want_copy: bool
    ) -> AsyncIterator[Chunk]:
        """The `csv` module's reader, one chunk after another (the next chunk's offset is only
        known once the previous one is read), one chunk read ahead while memory allows."""
        baseline = psutil.Process().memory_info().rss
        row_bytes = 1024.0  # until the first chunk is measured

        def rows_within_budget() -> int:
            budget_rows = int(self.max_memory_bytes / 2 / (2 * row_bytes))
            rows = max(MIN_CHUNK_ROWS, min(self.chunk_size, budget_rows))
            self._note_chunk(rows)
            return rows

        def start(rows: int) -> asyncio.Future[Chunk]:
            return asyncio.ensure_future(
                self.workers.run(
                    parse_chunk, path, header, offset, line, rows, want_frame=want_frame, want_copy=want_copy
                )
            )

        pending: asyncio.Future[Chunk] | None = start(rows_within_budget())
        try:
            while pending is not None:
                chunk = await pending
                pending = None
                offset, line = chunk.next_offset, chunk.next_line
                row_bytes = estimate_row_bytes(chunk)
                rows = rows_within_budget()
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
