"""`stowage dev`: migrate, then the API and a worker sharing one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from app.bootstrap import build_services
from app.config import Settings
from app.main import create_app
from app.migrate import migrate
from app.server import GracefulServer
from worker.settings import build_worker

log = logging.getLogger(__name__)


async def run_dev(settings: Settings, host: str, port: int) -> None:
    if not settings.secret_key:
        log.warning("STOWAGE_SECRET_KEY is not set: download links are signed with a key that"
                    " changes on every restart. Set it outside of development.")
    applied = await migrate(settings.database_url)
    log.info("migrations applied: %s", applied or "none pending")
    async with build_services(settings) as services:
        server = GracefulServer(uvicorn.Config(create_app(settings, services), host=host,
                                               port=port,
                                               log_config=None,
                                               timeout_graceful_shutdown=settings.shutdown_grace))
        worker = build_worker(settings, services=services, handle_signals=False)
        worker_task = asyncio.create_task(worker.async_run())
        try:
            await server.serve()
        finally:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
            await worker.close()
