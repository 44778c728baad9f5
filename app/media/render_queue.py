"""Image work on request (transforms), off the event loop and bounded: a fixed number of
threads (libvips and Pillow release the GIL while they decode and encode) and a fixed number
of renders waiting for one. Past that the answer is 503 with Retry-After, never a backlog
that grows with the traffic and the memory with it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.errors import RendersBusy

T = TypeVar("T")


class RenderQueue:
    def __init__(self, workers: int | None = None, waiting: int | None = None) -> None:
        self.workers = workers or max(os.cpu_count() or 1, 1)
        # renders that may wait for a thread: a few per thread (a render is tens of ms)
        self.waiting = self.workers * 4 if waiting is None else waiting
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="stowage-render")
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Renders running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[[], T]) -> T:
        if self._admitted >= self.workers + self.waiting:
            raise RendersBusy(f"{self._admitted} image renders are running or waiting; try"
                              " again in a moment")
        self._admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self._admitted -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
