"""SQL of the event feed (migration 0018: table event_feed, filled at commit)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

# an event's public id, as deliveries send it in `webhook-id` (app.webhooks.service)
ID_PREFIX = "msg_"

# below every position, the backfilled ones (negative) included
START = -(2**63)


async def cursor(conn: asyncpg.Connection, app_id: UUID, event_id: UUID
                 ) -> asyncpg.Record | None:
    """Where the event sits in the app's feed: ``position`` and ``created_at`` (both NULL when
    the event exists, but no longer, or never, in the feed); None when the app has no such
    event."""
    return await conn.fetchrow(
        "SELECT f.position, f.created_at FROM events e"
        " LEFT JOIN event_feed f ON f.event_id = e.id"
        " WHERE e.id = $1 AND e.app_id = $2",
        event_id, app_id,
    )


async def page(conn: asyncpg.Connection, app_id: UUID, after: int, types: list[str] | None,
               limit: int) -> list[asyncpg.Record]:
    """The app's next ``limit`` events after position ``after``, in feed order: one range of
    the primary key (app_id, position), then a lookup of each event by its id. ``item`` is
    the event as JSON text (its body plus its id), passed on to the client undecoded."""
    return await conn.fetch(
        "SELECT e.id, (e.body || jsonb_build_object('id', $5::text || e.id))::text AS item"
        " FROM event_feed f JOIN events e ON e.id = f.event_id"
        " WHERE f.app_id = $1 AND f.position > $2"
        " AND ($3::text[] IS NULL OR f.type = ANY ($3::text[]))"
        " ORDER BY f.position LIMIT $4",
        app_id, after, types, limit, ID_PREFIX,
    )


async def expire(conn: asyncpg.Connection, older_than_s: float, batch: int) -> int:
    """Remove up to ``batch`` feed entries older than ``older_than_s`` seconds, oldest first;
    the events stay (their deliveries and the attachment timelines read them)."""
    done = await conn.execute(
        "DELETE FROM event_feed WHERE ctid = ANY (ARRAY("
        "  SELECT ctid FROM event_feed"
        "  WHERE created_at < now() - make_interval(secs => $1)"
        "  ORDER BY created_at LIMIT $2))",
        older_than_s, batch,
    )
    return int(done.split()[-1])
