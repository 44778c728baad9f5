"""Row counts kept by triggers (migration 0014): attachments per app and state, deliveries
per endpoint and status. Reading costs O(apps + changes not folded yet), not O(rows); the
worker's sweep folds the changes into the counts (``fold``) so that stays small.

TRUNCATE fires no trigger: counts of truncated tables are dropped with the apps and
endpoints they belong to, since readers only count scopes that still exist."""

from __future__ import annotations

from uuid import UUID

import asyncpg

# per kind: the table its scopes live in
_SCOPES = {"attachments": "apps", "deliveries": "webhook_endpoints", "bytes": "apps"}


async def by_scope(conn: asyncpg.Connection, kind: str) -> dict[tuple[UUID, str], int]:
    """{(scope, value): count} for every scope that exists; zero counts left out."""
    rows = await conn.fetch(
        "SELECT c.scope, c.value, c.n FROM current_row_counts c"
        f" JOIN {_SCOPES[kind]} s ON s.id = c.scope WHERE c.kind = $1 AND c.n <> 0",
        kind,
    )
    return {(r["scope"], r["value"]): r["n"] for r in rows}


async def totals(conn: asyncpg.Connection, kind: str) -> dict[str, int]:
    """{value: count} over every scope that exists."""
    out: dict[str, int] = {}
    for (_, value), n in (await by_scope(conn, kind)).items():
        out[value] = out.get(value, 0) + n
    return out


async def fold(conn: asyncpg.Connection) -> int:
    """Move the changes committed so far into the counts, in one statement (a reader sees
    them either as changes or as counts, never both); returns how many were folded. Counts
    of apps and endpoints that are gone are dropped."""
    folded = await conn.fetchval(
        "WITH moved AS (DELETE FROM row_count_changes RETURNING kind, scope, value, delta),"
        " summed AS (SELECT kind, scope, value, sum(delta) AS delta, count(*) AS rows"
        "   FROM moved GROUP BY kind, scope, value),"
        " applied AS (INSERT INTO row_counts (kind, scope, value, n)"
        "   SELECT kind, scope, value, delta FROM summed"
        "   ON CONFLICT (kind, scope, value) DO UPDATE SET n = row_counts.n + excluded.n)"
        " SELECT coalesce(sum(rows), 0) FROM summed")
    await conn.execute(
        "DELETE FROM row_counts c WHERE (c.kind IN ('attachments', 'bytes')"
        "   AND NOT EXISTS (SELECT 1 FROM apps a WHERE a.id = c.scope))"
        " OR (c.kind = 'deliveries'"
        "   AND NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = c.scope))")
    return int(folded)
