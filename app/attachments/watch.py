"""Wake long-polls when an attachment's state changes, from Postgres LISTEN/NOTIFY.

One listening connection per process, shared by every waiting request; the trigger in
migration 0002 notifies on commit of any state change, whichever process made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from uuid import UUID

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "stowage_attachment_state"


class StateWatcher:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._waiters: dict[UUID, set[asyncio.Future[None]]] = {}

    async def start(self) -> None:
        """Connect if not connected (lazily, and again after the connection was lost)."""
        if self._conn is not None and not self._conn.is_closed():
            return
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await asyncpg.connect(self._dsn, timeout=5)
            await conn.add_listener(CHANNEL, self._on_notify)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            att_id = UUID(payload)
        except ValueError:
            return
        for fut in self._waiters.pop(att_id, set()):
            if not fut.done():
                fut.set_result(None)

    def _on_lost(self, _conn: object) -> None:
        # wake everyone: each re-reads the row and answers with what is there now
        log.warning("LISTEN connection lost; long-polls answer early until it is back")
        self._conn = None
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    @contextlib.contextmanager
    def subscribe(self, att_id: UUID) -> Iterator[asyncio.Future[None]]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(att_id, set()).add(fut)
        try:
            yield fut
        finally:
            futs = self._waiters.get(att_id)
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    self._waiters.pop(att_id, None)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
