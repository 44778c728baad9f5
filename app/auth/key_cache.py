"""The API keys a process has seen, kept in memory so that a request needs no Postgres round
trip to know its app; forgotten the moment any key changes.

Revocation stays immediate: a trigger (migration 0015) NOTIFYs on commit of any change to
api_keys, and this process's listening connection empties the cache when it hears it. While
that connection is not up (not yet connected, lost, Postgres restarting) nothing is kept and
every request looks its key up, as without the cache. A lookup that raced a change (read
before it, finished after the notice) is not kept: an epoch counts the notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "stowage_keys"
# a kept key is looked up again after this long anyway: a bound on any notice lost unseen
TTL_S = 60.0
MAX_ENTRIES = 10_000
# after a failed connection attempt, the next one waits this long (lookups go on meanwhile)
RETRY_S = 2.0


class KeyCache:
    def __init__(self, dsn: str, *, ttl: float = TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        self._dsn = dsn
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[bytes, tuple[UUID, float]] = {}
        self._conn: asyncpg.Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._next_attempt = 0.0
        self._epoch = 0

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def app_for(self, key_hash: bytes,
                      lookup: Callable[[bytes], Awaitable[UUID | None]]) -> UUID | None:
        """The app of the key with this hash, from memory when it can be trusted, else from
        `lookup` (Postgres)."""
        if self.listening:
            kept = self._entries.get(key_hash)
            if kept is not None and kept[1] > time.monotonic():
                return kept[0]
        else:
            self._start_listening()
        epoch = self._epoch
        app_id = await lookup(key_hash)
        if app_id is not None and self.listening and epoch == self._epoch:
            if len(self._entries) >= self._max:
                self._entries.clear()  # rare (that many live keys); simpler than an LRU
            self._entries[key_hash] = (app_id, time.monotonic() + self._ttl)
        return app_id

    def _start_listening(self) -> None:
        if self._connecting is not None or time.monotonic() < self._next_attempt:
            return
        self._connecting = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=5)
            await conn.add_listener(CHANNEL, self._on_change)
            conn.add_termination_listener(self._on_lost)
            self._forget()  # a change may have come while nobody listened
            self._conn = conn
        except Exception as e:
            self._next_attempt = time.monotonic() + RETRY_S
            log.warning("API key cache off (no LISTEN connection: %s); keys are looked up on"
                        " every request", e)
        finally:
            self._connecting = None

    def _forget(self) -> None:
        self._epoch += 1
        self._entries.clear()

    def _on_change(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._forget()

    def _on_lost(self, _conn: object) -> None:
        log.warning("API key cache off: its LISTEN connection was lost")
        self._conn = None
        self._forget()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        self._forget()
