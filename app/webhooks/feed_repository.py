"""SQL of the event feed (migration 0018: table event_feed, filled at commit)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

# an event's public id, as deliveries send it in `webhook-id` (app.webhooks.service)
ID_PREFIX = "msg_"

# the event as JSON: its body plus its public id ($4 of the queries below: ID_PREFIX)
ITEM = "(e.body || jsonb_build_object('id', $4::text || e.id))::text"

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
    """The app's next ``limit`` events after position ``after`` (of ``types``, or all), in
    feed order; ``item`` is the event as JSON text (its body plus its public id), passed on
    to the client undecoded. One range of an index per type, then a lookup of each event:
    O(limit) rows read, however many events there are and however rare the types."""
    if types is None:
        return await conn.fetch(
            f"SELECT e.id, {ITEM} AS item FROM event_feed f JOIN events e ON e.id = f.event_id"
            " WHERE f.app_id = $1 AND f.position > $2 ORDER BY f.position LIMIT $3",
            app_id, after, limit, ID_PREFIX,
        )
    return await conn.fetch(
        "SELECT x.id, x.item FROM unnest($3::text[]) AS t (type)"
        f" CROSS JOIN LATERAL (SELECT f.position, e.id, {ITEM} AS item"
        "  FROM event_feed f JOIN events e ON e.id = f.event_id"
        "  WHERE f.app_id = $1 AND f.type = t.type AND f.position > $2"
        "  ORDER BY f.position LIMIT $5) AS x"
        " ORDER BY x.position LIMIT $5",
        app_id, after, types, ID_PREFIX, limit,
    )


async def expire(conn: asyncpg.Connection, older_than_s: float, batch: int) -> int:
    """Remove up to ``batch`` feed entries older than ``older_than_s`` seconds, oldest first;
    the events stay (their deliveries and the attachment timelines read them)."""
    return await conn.fetchval(
        "WITH gone AS (DELETE FROM event_feed WHERE ctid = ANY (ARRAY("
        "  SELECT ctid FROM event_feed"
        "  WHERE created_at < now() - make_interval(secs => $1)"
        "  ORDER BY created_at LIMIT $2))"
        " RETURNING 1) SELECT count(*) FROM gone",
        older_than_s, batch,
    ) or 0
