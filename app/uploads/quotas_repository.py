"""SQL for storage quotas: the apps' quota_bytes, their live bytes (row counts of kind
'bytes', migration 0021) and quota_reservations."""

from __future__ import annotations

from uuid import UUID

import asyncpg

# bytes an app holds: its live files (counts not folded yet included) and the live
# reservations of uploads in progress (but ``$2``'s own)
_HELD = (
    "(SELECT coalesce(sum(n), 0) FROM current_row_counts"
    "  WHERE kind = 'bytes' AND scope = $1 AND value = 'live')"
    " + (SELECT coalesce(sum(bytes), 0) FROM quota_reservations"
    "    WHERE app_id = $1 AND expires_at > now() AND id IS DISTINCT FROM $2)"
)


async def lock_quota(conn: asyncpg.Connection, app_id: UUID) -> int | None:
    """The app's quota, its row locked until the transaction ends when it has one (every
    reservation and recording of a quota'd app passes here, one at a time); None: no quota
    (nothing locked)."""
    return await conn.fetchval(
        "SELECT quota_bytes FROM apps WHERE id = $1 AND quota_bytes IS NOT NULL FOR UPDATE",
        app_id)


async def held(conn: asyncpg.Connection, app_id: UUID, reservation: UUID | None = None) -> int:
    """Bytes held by the app (files and live reservations but ``reservation``); read after
    lock_quota, in a new statement, so it sees every change committed under the lock."""
    return int(await conn.fetchval(f"SELECT {_HELD}", app_id, reservation))


async def live_bytes(conn: asyncpg.Connection, app_id: UUID) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(sum(n), 0) FROM current_row_counts"
        " WHERE kind = 'bytes' AND scope = $1 AND value = 'live'", app_id))


async def insert_reservation(conn: asyncpg.Connection, reservation: UUID, app_id: UUID,
                             size: int, seconds: float) -> None:
    await conn.execute(
        "INSERT INTO quota_reservations (id, app_id, bytes, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
        " ON CONFLICT (id) DO UPDATE SET bytes = excluded.bytes,"
        " expires_at = excluded.expires_at", reservation, app_id, size, seconds)


async def delete_reservation(conn: asyncpg.Connection, reservation: UUID) -> None:
    await conn.execute("DELETE FROM quota_reservations WHERE id = $1", reservation)


async def delete_expired(conn: asyncpg.Connection) -> int:
    result = await conn.execute("DELETE FROM quota_reservations WHERE expires_at < now()")
    return int(result.split()[-1])


async def quota_of(conn: asyncpg.Connection, app_id: UUID) -> int | None:
    return await conn.fetchval("SELECT quota_bytes FROM apps WHERE id = $1", app_id)


async def limits_of(conn: asyncpg.Connection, app_id: UUID) -> tuple[int | None, int | None] | None:
    row = await conn.fetchrow("SELECT quota_bytes, rate_limit FROM apps WHERE id = $1", app_id)
    return (row["quota_bytes"], row["rate_limit"]) if row is not None else None


async def live_attachments(conn: asyncpg.Connection, app_id: UUID, states: list[str]) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(sum(n), 0) FROM current_row_counts"
        " WHERE kind = 'attachments' AND scope = $1 AND value = ANY($2::text[])",
        app_id, states))
