"""SQL for presigned_uploads."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg


async def insert(conn: asyncpg.Connection, *, attachment_id: UUID, app_id: UUID, key: str,
                 profile: str, filename: str | None, max_size: int, expires_at: datetime
                 ) -> None:
    await conn.execute(
        "INSERT INTO presigned_uploads (attachment_id, app_id, key, profile, filename, max_size,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        attachment_id, app_id, key, profile, filename, max_size, expires_at,
    )


async def claim(conn: asyncpg.Connection, app_id: UUID, key: str) -> asyncpg.Record | None:
    """Take the presign for registration; only one caller ever gets it."""
    return await conn.fetchrow(
        "DELETE FROM presigned_uploads WHERE key = $1 AND app_id = $2 RETURNING *", key, app_id
    )


async def take_expired(conn: asyncpg.Connection, grace_s: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "DELETE FROM presigned_uploads WHERE attachment_id IN (SELECT attachment_id FROM"
        " presigned_uploads WHERE expires_at < now() - make_interval(secs => $1) LIMIT 1000)"
        " RETURNING *",
        grace_s,
    )
