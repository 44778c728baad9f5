"""The event feed (GET /v1/events): every event of an app, exactly once, in commit order,
from any point a client remembers.

Why positions are handed out at commit, by one sequencer per app
-----------------------------------------------------------------
An id or position taken while a transaction runs (a sequence at INSERT, a UUIDv7) becomes
visible when the transaction commits, and transactions commit in another order than they
began: A takes 10, B takes 11 and commits first; a reader that has seen 11 moves its cursor
past 10 and never sees it. Two ways out:

* PgQ's: record each event's transaction id and let readers expose only what lies below the
  oldest transaction still running (``pg_current_snapshot()``'s xmin), cutting the stream into
  batches between two snapshots. It never blocks a writer, but it gives batches, not an order
  (inside a batch the order is not the commit order), the cursor is a pair of snapshots rather
  than an event id, and one long transaction anywhere in the database (a backup, a migration,
  a forgotten psql session) holds every feed back until it ends.
* A sequencer at commit, chosen here. Migration 0018 puts a deferred constraint trigger on
  ``events``: it runs as the writing transaction commits, takes the app's advisory
  transaction lock, draws the next position from a sequence and writes the feed row.
  Postgres makes a committing transaction visible to new snapshots (ProcArrayEndTransaction)
  *before* it releases its locks, so the next writer of the app gets the lock, and its
  position, only after the previous one is visible. Hence, for any snapshot: if it sees
  position N, it sees every position below N that ever commits (a transaction that aborts
  after drawing leaves a hole in the numbers, which is harmless: cursors compare, they never
  count). The order is the commit order, the cursor is an event id, and a reader is a plain
  index range ``position > p ORDER BY position``: no snapshot arithmetic, no waiting on
  strangers' transactions.

  The price: an app's event-writing transactions commit one at a time (each holds its app's
  lock from the trigger to the end of its commit flush, ~a WAL fsync), so one app's events
  commit at most ~1/fsync per second (thousands/s on an SSD); different apps do not wait on
  each other, and nothing but the commit itself is serialised (the lock is taken at commit).
  A transaction that writes events of several apps takes their locks in the order it wrote
  the events, so two such transactions at once could deadlock (Postgres would abort one);
  today only the sweep does (expiring uploads of many apps), and one sweep runs at a time.

The feed is a table beside the outbox (``event_feed``), so retention removes feed entries
and never the events, which deliveries and attachment timelines still read.

Long-polls (``wait``) are woken by the trigger's NOTIFY on the process's one LISTEN
connection (app.listen), never by polling Postgres in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from app.errors import EventGone, EventNotFound
from app.listen import Notifications
from app.webhooks import feed_repository as repo

CHANNEL = "stowage_events"
EXPIRE_BATCH = 10_000


@dataclass
class FeedPage:
    ids: list[UUID]
    items: list[str]  # each event as JSON text, as Postgres wrote it

    def json(self) -> bytes:
        """The answer's body, made without decoding the events again."""
        cursor = json.dumps(public_id(self.ids[-1])) if self.ids else "null"
        return f'{{"items":[{",".join(self.items)}],"next_cursor":{cursor}}}'.encode()


class EventFeed:
    def __init__(self, *, pool: asyncpg.Pool, notifications: Notifications,
                 retention_s: int) -> None:
        self.pool = pool
        self.notifications = notifications
        self.retention_s = retention_s

    async def _position_after(self, conn: asyncpg.Connection, app_id: UUID,
                              after: UUID | None) -> int:
        if after is None:
            return repo.START
        row = await repo.cursor(conn, app_id, after)
        if row is None:
            raise EventNotFound(f"no event {after} for this app")
        cutoff = datetime.now(UTC) - timedelta(seconds=self.retention_s)
        if row["position"] is None or row["created_at"] < cutoff:
            raise EventGone(f"event {after} is older than the feed keeps"
                            f" ({self.retention_s} s): read the feed from its start")
        return int(row["position"])

    async def read(self, app_id: UUID, *, after: UUID | None, types: list[str] | None,
                   limit: int, wait: float) -> FeedPage:
        """The next ``limit`` events after the event ``after`` (oldest first). With ``wait``,
        answers as soon as there is at least one, or empty when the time is up."""
        async with self.pool.acquire() as conn:
            position = await self._position_after(conn, app_id, after)
            rows = await repo.page(conn, app_id, position, types, limit)
        if rows or wait <= 0:
            return _page(rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            await self.notifications.start()  # again after a lost LISTEN connection
            # subscribed before reading: a commit between the read and the wait wakes us
            with self.notifications.subscribe_to(CHANNEL, app_id) as committed:
                async with self.pool.acquire() as conn:
                    rows = await repo.page(conn, app_id, position, types, limit)
                left = deadline - loop.time()
                if rows or left <= 0:
                    return _page(rows)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(committed, left)

    async def expire(self) -> int:
        """Remove the feed entries older than the retention, in batches (the sweep)."""
        removed = 0
        while True:
            async with self.pool.acquire() as conn:
                n = await repo.expire(conn, self.retention_s, EXPIRE_BATCH)
            removed += n
            if n < EXPIRE_BATCH:
                return removed


def public_id(event_id: UUID) -> str:
    """The id clients see, in the feed and in each delivery's ``webhook-id``."""
    return f"{repo.ID_PREFIX}{event_id}"


def parse_public_id(value: str) -> UUID | None:
    """The event of a public id (``msg_`` and a UUID; the bare UUID is taken too)."""
    raw = value.removeprefix(repo.ID_PREFIX)
    try:
        return UUID(raw) if len(raw) == 36 else None
    except ValueError:
        return None


def _page(rows: list[asyncpg.Record]) -> FeedPage:
    return FeedPage([r["id"] for r in rows], [r["item"] for r in rows])
