"""uvicorn as `stowage serve` and `stowage dev` run it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator

import uvicorn


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises the signal it caught once serve() returns, so a process stopped
    gracefully by SIGTERM still dies "by SIGTERM" (exit status 143 under a shell or Docker),
    and `stowage dev` would die before its worker and resources are shut down. Here SIGINT
    and SIGTERM only stop the server: in-flight requests finish (timeout_graceful_shutdown),
    the caller's cleanup runs, and the process exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)
