"""SQL of image variants (attachment_variants, migration 0017)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

COLUMNS = "attachment_id, generation, params, key, mime_type, size, width, height, created_at"


async def get(conn: asyncpg.Connection, att_id: UUID, generation: int, params: str
              ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM attachment_variants"
        " WHERE attachment_id = $1 AND generation = $2 AND params = $3",
        att_id, generation, params)


async def insert(conn: asyncpg.Connection, *, att_id: UUID, generation: int, params: str,
                 key: str, mime_type: str, size: int, width: int, height: int
                 ) -> asyncpg.Record:
    """The variant, once its file is in the store; only while the attachment is still the
    stored one of that generation (else None: the caller removes what it wrote)."""
    return await conn.fetchrow(
        "INSERT INTO attachment_variants (attachment_id, generation, params, key, mime_type,"
        " size, width, height)"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM attachments"
        "  WHERE id = $1 AND state = 'stored' AND generation = $2"
        " ON CONFLICT (attachment_id, generation, params) DO UPDATE SET key = EXCLUDED.key"
        f" RETURNING {COLUMNS}",
        att_id, generation, params, key, mime_type, size, width, height)


async def usage(conn: asyncpg.Connection, att_id: UUID, generation: int) -> tuple[int, int]:
    """(count, bytes) of the attachment's variants of its current generation."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes FROM attachment_variants"
        " WHERE attachment_id = $1 AND generation = $2", att_id, generation)
    return row["n"], row["bytes"]


async def forget(conn: asyncpg.Connection, att_id: UUID) -> None:
    await conn.execute("DELETE FROM attachment_variants WHERE attachment_id = $1", att_id)


async def forget_older(conn: asyncpg.Connection, att_id: UUID, generation: int) -> None:
    """The rows of earlier generations (their files go with their prefix)."""
    await conn.execute("DELETE FROM attachment_variants WHERE attachment_id = $1"
                       " AND generation < $2", att_id, generation)
