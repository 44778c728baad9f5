"""Keeping something alive while a block of work runs: a lease in Postgres, the expiry of a
job's in-progress key in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def renewing(renew: Callable[[], Awaitable[bool | None]], every: float, *,
                   what: str | None = None) -> AsyncIterator[None]:
    """While the block runs, ``renew()`` every ``every`` seconds, in a task of its own.

    A renewal that raises is tried again at the next turn: what it keeps outlives a few
    missed turns (logged when ``what`` names it). One that returns False ends the renewing:
    the thing is lost or gone, and the block finds that out by itself."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                if await renew() is False:
                    return
            except Exception as exc:
                if what is not None:
                    log.warning("could not renew %s: %s", what, exc)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
