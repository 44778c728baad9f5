"""SQL for operations: counts the gauges and `stowage doctor` need."""

from __future__ import annotations

import asyncpg


async def attachments_by_state(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT state, count(*) AS n FROM attachments GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def deliveries_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}


async def applied_migrations(conn: asyncpg.Connection) -> set[str]:
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        return set()
    return {r["version"] for r in rows}
