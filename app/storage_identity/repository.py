"""SQL of the storage identities: which storage the database recorded, per role."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app import db

# one lock for every first use: two processes recording at once agree on one identity
_LOCK = "stowage:storage-identity"


async def recorded(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    """Per role: storage_id, location, recorded_at."""
    rows = await conn.fetch(
        "SELECT role, storage_id, location, recorded_at FROM storage_identities")
    return {r["role"]: r for r in rows}


async def lock(conn: asyncpg.Connection) -> None:
    """Held until the transaction ends."""
    await db.advisory_xact_lock(conn, _LOCK)


async def record(conn: asyncpg.Connection, role: str, storage_id: UUID, location: str) -> None:
    """Record a role's storage unless one is recorded already (the caller re-reads)."""
    await conn.execute(
        "INSERT INTO storage_identities (role, storage_id, location) VALUES ($1, $2, $3)"
        " ON CONFLICT (role) DO NOTHING",
        role, storage_id, location,
    )


async def replace(conn: asyncpg.Connection, role: str, storage_id: UUID, location: str) -> None:
    """An operator's decision (`stowage storage adopt`): this storage is the role's now."""
    await conn.execute(
        "INSERT INTO storage_identities (role, storage_id, location) VALUES ($1, $2, $3)"
        " ON CONFLICT (role) DO UPDATE SET storage_id = EXCLUDED.storage_id,"
        " location = EXCLUDED.location, recorded_at = now(), seen_at = now()",
        role, storage_id, location,
    )


async def moved(conn: asyncpg.Connection, role: str, storage_id: UUID, location: str) -> None:
    """The recorded storage, found at another location (moved with its marker)."""
    await conn.execute(
        "UPDATE storage_identities SET location = $3, seen_at = now()"
        " WHERE role = $1 AND storage_id = $2",
        role, storage_id, location,
    )


async def has_live_files(conn: asyncpg.Connection, role: str) -> bool:
    """Whether attachments have their files in this role's storage right now."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM attachments"
        " WHERE storage = $1 AND state IN ('cached', 'stored'))",
        role,
    )
