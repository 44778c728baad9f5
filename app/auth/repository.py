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
        "SELECT a.id, a.name, a.created_at,"
        " (SELECT count(*) FROM api_keys k WHERE k.app_id = a.id AND k.revoked_at IS NULL) AS keys"
        " FROM apps a ORDER BY a.created_at"
    )


async def rename_app(conn: asyncpg.Connection, app_id: UUID, name: str
                     ) -> asyncpg.Record | None:
    return await conn.fetchrow("UPDATE apps SET name = $2 WHERE id = $1"
                               " RETURNING id, name, created_at", app_id, name)


async def get_app(conn: asyncpg.Connection, app_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, created_at FROM apps WHERE id = $1", app_id)


async def insert_key(
    conn: asyncpg.Connection, key_id: UUID, app_id: UUID, key_hash: bytes, prefix: str
) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO api_keys (id, app_id, key_hash, prefix) VALUES ($1, $2, $3, $4)"
        " RETURNING id, app_id, prefix, created_at, revoked_at",
        key_id, app_id, key_hash, prefix,
    )


async def list_keys(conn: asyncpg.Connection, app_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, app_id, prefix, created_at, revoked_at FROM api_keys"
        " WHERE app_id = $1 ORDER BY created_at",
        app_id,
    )


async def revoke_key(conn: asyncpg.Connection, key_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        " RETURNING id, app_id, prefix, created_at, revoked_at",
        key_id,
    )


async def app_id_for_key_hash(conn: asyncpg.Connection, key_hash: bytes) -> UUID | None:
    return await conn.fetchval(
        "SELECT app_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
