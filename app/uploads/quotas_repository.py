"""SQL for storage quotas: app_quota (an app's quota, used and reserved bytes) and
quota_reservations (migration 0021)."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def reserve(conn: asyncpg.Connection, reservation: UUID, app_id: UUID, size: int,
                  seconds: float) -> bool:
    """Hold ``size`` bytes of the app's quota if they fit, in one statement: the row's lock
    orders concurrent reservations, and each re-checks the row as the one before left it.
    False: they do not fit, or the app has no quota."""
    # synchronous_commit off for this statement's transaction: the row lock is released at
    # commit without waiting for the WAL flush (uploads of one app queue on it). A reservation
    # a database crash loses costs nothing: the INSERT of its upload checks the quota itself.
    return bool(await conn.fetchval(
        "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),"
        " q AS (UPDATE app_quota SET reserved = reserved + $3"
        "       WHERE app_id = $1 AND used + reserved + $3 <= quota_bytes"
        "       RETURNING app_id)"
        " INSERT INTO quota_reservations (id, app_id, bytes, expires_at)"
        " SELECT $2, app_id, $3, now() + make_interval(secs => $4) FROM q, s RETURNING true",
        app_id, reservation, size, seconds))


async def standing(conn: asyncpg.Connection, app_id: UUID, *, lock: bool = False
                   ) -> asyncpg.Record | None:
    """The app's quota, used and reserved bytes (None: no quota); ``lock``: its row locked
    until the transaction ends, as the latest commit left it."""
    return await conn.fetchrow(
        "SELECT quota_bytes, used, reserved FROM app_quota WHERE app_id = $1"
        + (" FOR UPDATE" if lock else ""), app_id)


async def delete_reservation(conn: asyncpg.Connection, reservation: UUID) -> None:
    """Its bytes go back to the app (trigger release_reserved)."""
    await conn.execute("DELETE FROM quota_reservations WHERE id = $1", reservation)


async def delete_expired(conn: asyncpg.Connection) -> int:
    result = await conn.execute("DELETE FROM quota_reservations WHERE expires_at < now()"
                                " AND converted_size IS NULL")
    return int(result.split()[-1])


async def fold_converted(conn: asyncpg.Connection) -> int:
    """Reservations whose uploads are recorded: their bytes leave reserved (trigger
    release_reserved) and their uploads' sizes join used, in one statement."""
    return int(await conn.fetchval(
        "WITH f AS (DELETE FROM quota_reservations WHERE converted_size IS NOT NULL"
        "           RETURNING app_id, converted_size),"
        " s AS (SELECT app_id, sum(converted_size) AS n, count(*) AS k FROM f GROUP BY app_id),"
        " u AS (UPDATE app_quota q SET used = q.used + s.n FROM s WHERE q.app_id = s.app_id)"
        " SELECT coalesce(sum(k), 0) FROM s"))


async def limits_of(conn: asyncpg.Connection, app_id: UUID
                    ) -> tuple[int | None, int | None] | None:
    row = await conn.fetchrow("SELECT quota_bytes, rate_limit FROM apps WHERE id = $1", app_id)
    return (row["quota_bytes"], row["rate_limit"]) if row is not None else None


async def live_bytes(conn: asyncpg.Connection, app_id: UUID) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(sum(n), 0) FROM current_row_counts"
        " WHERE kind = 'bytes' AND scope = $1 AND value = 'live'", app_id))


async def live_attachments(conn: asyncpg.Connection, app_id: UUID, states: list[str]) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(sum(n), 0) FROM current_row_counts"
        " WHERE kind = 'attachments' AND scope = $1 AND value = ANY($2::text[])",
        app_id, states))


async def rename_reservation(conn: asyncpg.Connection, old: UUID, new: UUID) -> None:
    """A tus upload's reservation (its upload's id) becomes its attachment's, so the INSERT
    of the attachment finds it."""
    await conn.execute("UPDATE quota_reservations SET id = $2 WHERE id = $1", old, new)
