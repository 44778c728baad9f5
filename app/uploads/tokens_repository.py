"""SQL for the upload_tokens table."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

COLUMNS = ("t.id, t.app_id, t.key_id, t.profile, t.record_type, t.record_id, t.record_name,"
           " t.metadata, t.max_size, t.uses, t.uses_left, t.created_at, t.expires_at")


async def insert(conn: asyncpg.Connection, *, id: UUID, app_id: UUID, key_id: UUID,
                 token_hash: bytes, profile: str, record: tuple[str, str, str] | None,
                 metadata: dict[str, Any], max_size: int | None, uses: int,
                 expires_in: int) -> asyncpg.Record:
    record_type, record_id, record_name = record or (None, None, None)
    return await conn.fetchrow(
        "INSERT INTO upload_tokens AS t (id, app_id, key_id, token_hash, profile, record_type,"
        " record_id, record_name, metadata, max_size, uses, uses_left, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11,"
        "         now() + make_interval(secs => $12))"
        f" RETURNING {COLUMNS}",
        id, app_id, key_id, token_hash, profile, record_type, record_id, record_name,
        metadata, max_size, uses, expires_in)


async def live_by_hash(conn: asyncpg.Connection, token_hash: bytes) -> asyncpg.Record | None:
    """The token if it is neither expired nor revoked (its key revoked, its app deleted); used
    up or not."""
    return await conn.fetchrow(
        f"SELECT {COLUMNS}, a.quota_bytes, a.rate_limit FROM upload_tokens t"
        " JOIN api_keys k ON k.id = t.key_id JOIN apps a ON a.id = t.app_id"
        " WHERE t.token_hash = $1 AND t.expires_at > now() AND k.revoked_at IS NULL",
        token_hash)


async def take_use(conn: asyncpg.Connection, token_id: UUID) -> int | None:
    """One use, atomically (one statement: concurrent requests never take more than there
    are); None when used up, expired or revoked."""
    return await conn.fetchval(
        "UPDATE upload_tokens t SET uses_left = uses_left - 1"
        " WHERE t.id = $1 AND t.uses_left > 0 AND t.expires_at > now()"
        " AND EXISTS (SELECT 1 FROM api_keys k WHERE k.id = t.key_id AND k.revoked_at IS NULL)"
        " RETURNING uses_left", token_id)


async def give_use_back(conn: asyncpg.Connection, token_id: UUID) -> None:
    await conn.execute("UPDATE upload_tokens SET uses_left = uses_left + 1"
                       " WHERE id = $1 AND uses_left < uses", token_id)


async def delete_expired(conn: asyncpg.Connection, grace_seconds: int) -> int:
    """Tokens expired for longer than ``grace_seconds`` go (what they made keeps its
    upload_token_id; nothing can present the token any more)."""
    result = await conn.execute(
        "DELETE FROM upload_tokens WHERE expires_at < now() - make_interval(secs => $1)",
        grace_seconds)
    return int(result.split()[-1])
