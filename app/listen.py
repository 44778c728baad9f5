"""Wake waiting requests from Postgres LISTEN/NOTIFY: one listening connection per process,
shared by every waiter, on a few channels whose payloads are ids (an attachment's, an
app's). Notifications arrive on commit, whichever process made the change.

A waiter subscribes to (channel, id) *before* it reads what it waits on, then waits on the
future: a change committed between the read and the wait still wakes it. When the listening
connection is lost every waiter is woken, to read again and answer with what is there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from uuid import UUID

import asyncpg

log = logging.getLogger(__name__)


class Notifications:
    def __init__(self, dsn: str, channels: Iterable[str]) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._waiters: dict[tuple[str, UUID], set[asyncio.Future[None]]] = {}

    async def start(self) -> None:
        """Connect if not connected (lazily, and again after the connection was lost)."""
        if self._conn is not None and not self._conn.is_closed():
            return
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await asyncpg.connect(self._dsn, timeout=5)
            for channel in self._channels:
                await conn.add_listener(channel, self._on_notify)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        try:
            key = UUID(payload)
        except ValueError:
            return
        for fut in self._waiters.pop((channel, key), set()):
            if not fut.done():
                fut.set_result(None)

    def _on_lost(self, _conn: object) -> None:
        log.warning("LISTEN connection lost; long-polls answer early until it is back")
        self._conn = None
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    @contextlib.contextmanager
    def subscribe_to(self, channel: str, key: UUID) -> Iterator[asyncio.Future[None]]:
        """A future set by the next notification of ``key`` on ``channel`` (which must be
        one of those given at construction)."""
        assert channel in self._channels, channel
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((channel, key), set()).add(fut)
        try:
            yield fut
        finally:
            futs = self._waiters.get((channel, key))
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    self._waiters.pop((channel, key), None)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
