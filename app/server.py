"""uvicorn as `stowage serve` and `stowage dev` run it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.config import ConfigError


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


class StartupErrors:
    """The API as `stowage serve` hands it to uvicorn: a configuration error while starting
    (a refused storage, ...; logged with its reason where it was found) fails the startup with
    one line instead of uvicorn logging the whole traceback, and is kept in `error` for the
    command to exit with."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.error: ConfigError | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_startup(message: Any) -> None:
            error = getattr(self.app.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and error is not None:
                self.error = error
                message = {**message, "message": f"{type(error).__name__}: not starting"}
            await send(message)

        await self.app(scope, receive, send_startup)
