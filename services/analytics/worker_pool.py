"""The process pool that runs CPU-heavy pandas work off the event loop.

A process pool (not threads): pandas group-bys and percentiles hold the GIL for most of their
time, so threads would still stall the loop. `forkserver` children start from a clean
interpreter instead of a fork of a process that already runs an event loop and threads.
The worker count is tunable live: `resize()` swaps in a new pool and lets the old one finish
the work it already has.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def _warm() -> int:
    import pandas  # noqa: F401 - importing once per child makes the first real task fast

    import services.analytics.uploads.arrow_chunks  # noqa: F401 - and the upload parser's Arrow

    return 0


class WorkerPool:
    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._executor: ProcessPoolExecutor | None = None

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._max_workers, mp_context=multiprocessing.get_context("forkserver")
        )

    async def start(self) -> None:
        self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _warm) for _ in range(self._max_workers)))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in a worker process; arguments and result are pickled."""
        if self._executor is None:
            self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def resize(self, max_workers: int) -> None:
        if max_workers == self._max_workers:
            return
        old = self._executor
        self._max_workers = max_workers
        self._executor = self._new_executor()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=False)
        log.info("worker pool resized to %d processes", max_workers)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
