"""Image work on request (transforms), off the event loop and bounded: a fixed number of
threads (libvips and Pillow release the GIL while they decode and encode) and a fixed number
of renders waiting for one. Past that the answer is 503 with Retry-After, never a backlog
that grows with the traffic and the memory with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
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
        # a turn is held by a render that runs, and by what it holds meanwhile (a database
        # connection, its advisory lock): renders waiting for a thread hold nothing else
        self._turns = asyncio.Semaphore(self.workers)

    @property
    def admitted(self) -> int:
        """Renders running or waiting now."""
        return self._admitted

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Admitted (else RendersBusy: 503), then one of the ``workers`` turns: what a render
        needs besides its thread is taken inside, so waiting renders never hold a database
        connection the rest of the API needs."""
        if self._admitted >= self.workers + self.waiting:
            raise RendersBusy(f"{self._admitted} image renders are running or waiting; try"
                              " again in a moment")
        self._admitted += 1
        try:
            async with self._turns:
                yield
        finally:
            self._admitted -= 1

    async def execute(self, fn: Callable[[], T]) -> T:
        """``fn`` on one of the threads; call it inside :meth:`turn`."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def run(self, fn: Callable[[], T]) -> T:
        async with self.turn():
            return await self.execute(fn)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
