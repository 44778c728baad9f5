"""SQL for operations: counts the gauges and `stowage doctor` need."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app import counts


async def attachments_by_state(conn: asyncpg.Connection) -> dict[str, int]:
    return await counts.totals(conn, "attachments")  # O(apps), not O(rows): app.counts


async def deliveries_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    return await counts.totals(conn, "deliveries")


async def app_quotas(conn: asyncpg.Connection) -> dict[UUID, int | None]:
    """{app id: its quota or None} of every live app."""
    rows = await conn.fetch("SELECT id, quota_bytes FROM apps WHERE deleted_at IS NULL")
    return {r["id"]: r["quota_bytes"] for r in rows}


async def applied_migrations(conn: asyncpg.Connection) -> set[str]:
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        return set()
    return {r["version"] for r in rows}
