"""SQL for apps and api_keys."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def insert_app(conn: asyncpg.Connection, app_id: UUID, name: str) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO apps (id, name) VALUES ($1, $2) RETURNING id, name, created_at", app_id, name
    )


async def list_apps(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT a.id, a.name, a.created_at, a.quota_bytes, a.rate_limit,"
        " (SELECT count(*) FROM api_keys k WHERE k.app_id = a.id AND k.revoked_at IS NULL) AS keys"
        " FROM apps a WHERE a.deleted_at IS NULL ORDER BY a.created_at"
    )


async def update_limits(conn: asyncpg.Connection, app_id: UUID, *, set_quota: bool,
                        quota_bytes: int | None, set_rate: bool, rate_limit: int | None
                        ) -> asyncpg.Record | None:
    """In a transaction: the app's limits, and its app_quota row (migration 0021) made,
    changed or removed with its quota. A new row's used bytes are counted with writes to the
    tables it counts held off (SHARE lock, for the moment of the count), so no change is
    counted twice or missed."""
    row = await conn.fetchrow(
        "UPDATE apps SET quota_bytes = CASE WHEN $2 THEN $3 ELSE quota_bytes END,"
        " rate_limit = CASE WHEN $4 THEN $5 ELSE rate_limit END"
        " WHERE id = $1 AND deleted_at IS NULL"
        " RETURNING id, name, created_at, quota_bytes, rate_limit",
        app_id, set_quota, quota_bytes, set_rate, rate_limit)
    if row is None or not set_quota:
        return row
    if quota_bytes is None:
        await conn.execute("DELETE FROM app_quota WHERE app_id = $1", app_id)
        await conn.execute("DELETE FROM quota_reservations WHERE app_id = $1", app_id)
        return row
    changed = await conn.fetchval("UPDATE app_quota SET quota_bytes = $2 WHERE app_id = $1"
                                  " RETURNING true", app_id, quota_bytes)
    if not changed:
        await conn.execute("LOCK TABLE attachments, attachment_variants IN SHARE MODE")
        await conn.execute(
            "INSERT INTO app_quota (app_id, quota_bytes, used, reserved) VALUES ($1, $2,"
            " (SELECT coalesce(sum(n), 0) FROM current_row_counts"
            "   WHERE kind = 'bytes' AND scope = $1)"
            " - (SELECT coalesce(sum(converted_size), 0) FROM quota_reservations"
            "    WHERE app_id = $1),"
            " (SELECT coalesce(sum(bytes), 0) FROM quota_reservations WHERE app_id = $1))",
            app_id, quota_bytes)
    return row


async def rename_app(conn: asyncpg.Connection, app_id: UUID, name: str
                     ) -> asyncpg.Record | None:
    return await conn.fetchrow("UPDATE apps SET name = $2 WHERE id = $1"
                               " RETURNING id, name, created_at", app_id, name)


async def get_app(conn: asyncpg.Connection, app_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, created_at FROM apps WHERE id = $1"
                               " AND deleted_at IS NULL", app_id)


async def mark_app_deleted(conn: asyncpg.Connection, app_id: UUID) -> asyncpg.Record | None:
    """Everything that makes an app usable ends now; its files go in the background. Its
    name is freed (suffixed) for a new app."""
    app = await conn.fetchrow(
        "UPDATE apps SET deleted_at = now(), name = name || ' (deleted ' || id || ')'"
        " WHERE id = $1 AND deleted_at IS NULL RETURNING id, name, created_at", app_id)
    if app is None:
        return None
    await conn.execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                       " WHERE app_id = $1", app_id)
    await conn.execute("UPDATE webhook_endpoints SET enabled = false WHERE app_id = $1", app_id)
    await conn.execute("UPDATE tus_uploads SET expires_at = now() WHERE app_id = $1"
                       " AND state = 'receiving'", app_id)
    await conn.execute("UPDATE presigned_uploads SET expires_at = now() WHERE app_id = $1",
                       app_id)
    await delete_attachments_of_deleted_apps(conn, app_id)
    return app


async def delete_attachments_of_deleted_apps(conn: asyncpg.Connection,
                                             app_id: UUID | None = None) -> int:
    result = await conn.execute(
        "UPDATE attachments SET state = 'deleted', deleted_at = now(), updated_at = now(),"
        " generation = generation + 1,"
        " error = '{\"code\": \"app_deleted\", \"detail\": \"its app was deleted\"}'::jsonb"
        " WHERE state <> 'deleted' AND app_id IN (SELECT id FROM apps"
        "  WHERE deleted_at IS NOT NULL AND ($1::uuid IS NULL OR id = $1))", app_id)
    return int(result.split()[-1])


async def remove_emptied_apps(conn: asyncpg.Connection) -> list[UUID]:
    """Deleted apps with no file left anywhere: their rows go (and what cascades)."""
    rows = await conn.fetch(
        "DELETE FROM apps a WHERE a.deleted_at IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM attachments t WHERE t.app_id = a.id"
        "                 AND t.purged_at IS NULL)"
        " AND NOT EXISTS (SELECT 1 FROM tus_uploads u WHERE u.app_id = a.id)"
        " AND NOT EXISTS (SELECT 1 FROM presigned_uploads p WHERE p.app_id = a.id)"
        " RETURNING a.id")
    return [r["id"] for r in rows]


async def insert_key(
    conn: asyncpg.Connection, key_id: UUID, app_id: UUID, key_hash: bytes, prefix: str,
    scopes: list[str],
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO api_keys (id, app_id, key_hash, prefix, scopes)"
        " VALUES ($1, $2, $3, $4, $5)"
        " RETURNING id, app_id, prefix, created_at, revoked_at, scopes",
        key_id, app_id, key_hash, prefix, scopes,
    )


async def list_keys(conn: asyncpg.Connection, app_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, app_id, prefix, created_at, revoked_at, scopes FROM api_keys"
        " WHERE app_id = $1 ORDER BY created_at",
        app_id,
    )


async def revoke_key(conn: asyncpg.Connection, key_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        " RETURNING id, app_id, prefix, created_at, revoked_at, scopes",
        key_id,
    )


async def key_for_hash(conn: asyncpg.Connection, key_hash: bytes) -> asyncpg.Record | None:
    """The live key with this hash: its id, app and scopes, and its app's limits."""
    return await conn.fetchrow(
        "SELECT k.id, k.app_id, k.scopes, a.quota_bytes, a.rate_limit FROM api_keys k"
        " JOIN apps a ON a.id = k.app_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        key_hash)
