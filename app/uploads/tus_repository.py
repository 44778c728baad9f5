"""SQL for the tus_uploads table."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

COLUMNS = (
    "id, app_id, length, upload_offset, profile, options, metadata_header, storage_key,"
    " s3_upload_id, s3_parts, tail_key, tail_size, state, attachment_id, lock_owner,"
    " lock_until, taken_over, expires_at, created_at, updated_at, completed_at,"
    " upload_token_id, expires_at < now() AS expired"
)


async def insert(conn: asyncpg.Connection, *, id: UUID, app_id: UUID, length: int, profile: str,
                 options: dict[str, Any], metadata_header: str | None, storage_key: str,
                 expiry: int, upload_token_id: UUID | None = None) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO tus_uploads (id, app_id, length, profile, options, metadata_header,"
        " storage_key, expires_at, upload_token_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $9)"
        f" RETURNING {COLUMNS}",
        id, app_id, length, profile, options, metadata_header, storage_key, expiry,
        upload_token_id,
    )


async def get_for_app(conn: asyncpg.Connection, app_id: UUID, upload_id: UUID
                      ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM tus_uploads WHERE id = $1 AND app_id = $2", upload_id, app_id
    )


async def acquire_lease(conn: asyncpg.Connection, app_id: UUID, upload_id: UUID, token: UUID,
                        seconds: float) -> asyncpg.Record | None:
    """Take the upload's lease if nobody holds a live one; None when missing or held. Taking
    a lease its holder never released marks the upload taken_over (that holder may live)."""
    return await conn.fetchrow(
        "UPDATE tus_uploads SET lock_owner = $3, lock_until = now() + make_interval(secs => $4),"
        " taken_over = taken_over OR lock_owner IS NOT NULL"
        " WHERE id = $1 AND app_id = $2 AND (lock_until IS NULL OR lock_until < now())"
        f" RETURNING {COLUMNS}",
        upload_id, app_id, token, seconds,
    )


async def renew_lease(conn: asyncpg.Connection, upload_id: UUID, token: UUID,
                      seconds: float) -> bool:
    row = await conn.fetchval(
        "UPDATE tus_uploads SET lock_until = now() + make_interval(secs => $3)"
        " WHERE id = $1 AND lock_owner = $2 RETURNING true",
        upload_id, token, seconds,
    )
    return bool(row)


async def release_lease(conn: asyncpg.Connection, upload_id: UUID, token: UUID) -> None:
    await conn.execute(
        "UPDATE tus_uploads SET lock_owner = NULL, lock_until = NULL"
        " WHERE id = $1 AND lock_owner = $2",
        upload_id, token,
    )


async def save_progress(
    conn: asyncpg.Connection, upload_id: UUID, token: UUID, *, committed_offset: int,
    offset: int, s3_upload_id: str | None, s3_parts: list[dict[str, Any]],
    tail_key: str | None, tail_size: int, attachment_id: UUID | None, expiry: int,
    lease: float,
) -> asyncpg.Record | None:
    """Record durable progress; None when the lease was lost (someone else took over).

    ``attachment_id`` given means every byte is here: the upload becomes ``completing``.
    """
    return await conn.fetchrow(
        "UPDATE tus_uploads SET upload_offset = $4, s3_upload_id = $5, s3_parts = $6,"
        " tail_key = $7, tail_size = $8,"
        " state = CASE WHEN $9::uuid IS NULL THEN 'receiving' ELSE 'completing' END,"
        " attachment_id = $9, expires_at = now() + make_interval(secs => $10),"
        " lock_until = now() + make_interval(secs => $11), updated_at = now()"
        " WHERE id = $1 AND lock_owner = $2 AND upload_offset = $3 AND state = 'receiving'"
        f" RETURNING {COLUMNS}",
        upload_id, token, committed_offset, offset, s3_upload_id, s3_parts, tail_key, tail_size,
        attachment_id, expiry, lease,
    )


async def set_s3_upload_id(conn: asyncpg.Connection, upload_id: UUID, token: UUID,
                           s3_upload_id: str | None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE tus_uploads SET s3_upload_id = $3, updated_at = now()"
        f" WHERE id = $1 AND lock_owner = $2 RETURNING {COLUMNS}",
        upload_id, token, s3_upload_id,
    )


async def mark_done(conn: asyncpg.Connection, upload_id: UUID, token: UUID,
                    expiry: int) -> asyncpg.Record | None:
    """The attachment exists; the row stays until it expires so a HEAD can still tell it."""
    return await conn.fetchrow(
        "UPDATE tus_uploads SET state = 'done', s3_upload_id = NULL, s3_parts = '[]',"
        " tail_key = NULL, tail_size = 0, completed_at = now(), updated_at = now(),"
        " expires_at = now() + make_interval(secs => $3)"
        f" WHERE id = $1 AND lock_owner = $2 AND state = 'completing' RETURNING {COLUMNS}",
        upload_id, token, expiry,
    )


async def delete(conn: asyncpg.Connection, upload_id: UUID, token: UUID) -> bool:
    return bool(await conn.fetchval(
        "DELETE FROM tus_uploads WHERE id = $1 AND lock_owner = $2 RETURNING true",
        upload_id, token,
    ))


async def claim_expired(conn: asyncpg.Connection, token: UUID, lease: float,
                        limit: int) -> list[asyncpg.Record]:
    """Lease up to ``limit`` expired uploads that nobody is working on, for removal."""
    return await conn.fetch(
        "UPDATE tus_uploads SET lock_owner = $1, lock_until = now() + make_interval(secs => $2)"
        " WHERE id IN (SELECT id FROM tus_uploads WHERE expires_at < now()"
        "  AND (lock_until IS NULL OR lock_until < now())"
        "  ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {COLUMNS}",
        token, lease, limit,
    )


async def claim_stalled_completions(conn: asyncpg.Connection, token: UUID, lease: float,
                                    stalled_for: float, limit: int) -> list[asyncpg.Record]:
    """Lease uploads left ``completing`` by a request that died, to finish them."""
    return await conn.fetch(
        "UPDATE tus_uploads SET lock_owner = $1, lock_until = now() + make_interval(secs => $2)"
        " WHERE id IN (SELECT id FROM tus_uploads WHERE state = 'completing'"
        "  AND (lock_until IS NULL OR lock_until < now())"
        "  AND updated_at < now() - make_interval(secs => $3)"
        "  ORDER BY updated_at LIMIT $4 FOR UPDATE SKIP LOCKED)"
        f" RETURNING {COLUMNS}",
        token, lease, stalled_for, limit,
    )
