"""Blocking work on a stream's blocks (hashing, writing), in worker threads, in order, behind
the event loop.

Awaiting each block's hash or write before reading the next one stalls the upload: uvicorn
stops reading the socket once 64 KiB wait unread, so every wait is a gap in the TCP stream.
An OrderedOffload queues a few blocks instead and runs them one after another in the default
executor, so the event loop goes on receiving while a block is hashed or written; it only
waits when `depth` blocks are already queued (backpressure: memory stays bounded).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

DEFAULT_DEPTH = 4


class OrderedOffload:
    """Runs ``fn(*args)`` calls in the default executor one at a time, in submission order.

    After a call fails the queued ones are dropped and the next `submit` or `drain` raises
    the error. Calls already started always run to completion (threads cannot be
    cancelled); `settle` waits for that, whatever happened to the caller.
    """

    def __init__(self, depth: int = DEFAULT_DEPTH) -> None:
        self._depth = depth
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._running: asyncio.Future[Any] | None = None
        self._error: BaseException | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._space = asyncio.Event()
        self._space.set()

    async def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        while len(self._queue) + (self._running is not None) >= self._depth:
            self._space.clear()
            await self._space.wait()
            self._raise()
        self._queue.append((fn, args))
        self._idle.clear()
        if self._running is None:
            self._start_next()

    async def drain(self) -> None:
        """Wait until every queued call ran; raise the first failure."""
        await self.settle()
        self._raise()

    async def settle(self) -> None:
        """Wait until nothing runs or waits to run; never raises the calls' errors."""
        await self._idle.wait()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _start_next(self) -> None:
        fn, args = self._queue.popleft()
        self._running = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._running.add_done_callback(self._finished)

    def _finished(self, fut: asyncio.Future[Any]) -> None:
        self._running = None
        if fut.cancelled():  # the loop is shutting down
            self._error = self._error or asyncio.CancelledError()
        elif (exc := fut.exception()) is not None and self._error is None:
            self._error = exc
        if self._error is not None:
            self._queue.clear()
        if self._queue:
            self._start_next()
        else:
            self._idle.set()
        self._space.set()
