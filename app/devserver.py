"""`stowage dev`: migrate, then the API and a worker sharing one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn

from app.config import Settings
from app.main import create_app
from app.migrate import migrate
from app.resources import build_resources
from worker.settings import build_worker

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises the signal it caught once serve() returns, which would kill the
    process before the worker and the resources are shut down; here a signal only stops
    the server, and run_dev's cleanup runs."""

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


async def run_dev(settings: Settings, host: str, port: int) -> None:
    if not settings.secret_key:
        log.warning("STOWAGE_SECRET_KEY is not set: download links are signed with a key that"
                    " changes on every restart. Set it outside of development.")
    applied = await migrate(settings.database_url)
    log.info("migrations applied: %s", applied or "none pending")
    async with build_resources(settings) as res:
        server = _Server(uvicorn.Config(create_app(settings, res), host=host, port=port,
                                        log_config=None,
                                        timeout_graceful_shutdown=settings.shutdown_grace))
        worker = build_worker(settings, resources=res, handle_signals=False)
        worker_task = asyncio.create_task(worker.async_run())
        try:
            await server.serve()
        finally:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
            await worker.close()
