"""SQL of idempotency_keys (migration 0018)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

COLUMNS = "endpoint, fingerprint, owner, lease_until > now() AS leased, status, headers, body"


async def claim(conn: asyncpg.Connection, app_id: UUID, key: str, endpoint: str,
                fingerprint: str | None, owner: UUID, lease_s: float, ttl_s: float
                ) -> asyncpg.Record | None:
    """Take the key for a first request: a new row, or one whose running owner's lease ran
    out (its process died). None when the key is held or answered: read it with `get`."""
    return await conn.fetchrow(
        "INSERT INTO idempotency_keys AS k (app_id, key, endpoint, fingerprint, owner,"
        "  lease_until, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6),"
        "  now() + make_interval(secs => $7))"
        " ON CONFLICT (app_id, key) DO UPDATE SET endpoint = EXCLUDED.endpoint,"
        "  fingerprint = EXCLUDED.fingerprint, owner = EXCLUDED.owner,"
        "  lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at,"
        "  created_at = now()"
        " WHERE (k.status IS NULL AND k.lease_until <= now()) OR k.expires_at <= now()"
        " RETURNING owner",
        app_id, key, endpoint, fingerprint, owner, lease_s, ttl_s,
    )


async def get(conn: asyncpg.Connection, app_id: UUID, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM idempotency_keys"
        " WHERE app_id = $1 AND key = $2 AND expires_at > now()",
        app_id, key,
    )


async def renew(conn: asyncpg.Connection, app_id: UUID, key: str, owner: UUID,
                lease_s: float) -> bool:
    done = await conn.execute(
        "UPDATE idempotency_keys SET lease_until = now() + make_interval(secs => $4)"
        " WHERE app_id = $1 AND key = $2 AND owner = $3",
        app_id, key, owner, lease_s,
    )
    return done.endswith(" 1")


async def answer(conn: asyncpg.Connection, app_id: UUID, key: str, owner: UUID,
                 fingerprint: str, status: int, headers: dict[str, Any], body: bytes,
                 ttl_s: float) -> bool:
    """Keep the first request's answer (for ``ttl_s`` from now)."""
    done = await conn.execute(
        "UPDATE idempotency_keys SET fingerprint = $4, status = $5, headers = $6, body = $7,"
        " owner = NULL, lease_until = NULL, expires_at = now() + make_interval(secs => $8)"
        " WHERE app_id = $1 AND key = $2 AND owner = $3",
        app_id, key, owner, fingerprint, status, headers, body, ttl_s,
    )
    return done.endswith(" 1")


async def release(conn: asyncpg.Connection, app_id: UUID, key: str, owner: UUID) -> None:
    """Forget a first request that failed: the client may try again with the same key."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE app_id = $1 AND key = $2 AND owner = $3",
        app_id, key, owner,
    )


async def expire(conn: asyncpg.Connection, batch: int) -> int:
    return await conn.fetchval(
        "WITH gone AS (DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY("
        "  SELECT ctid FROM idempotency_keys WHERE expires_at <= now()"
        "  ORDER BY expires_at LIMIT $1))"
        " RETURNING 1) SELECT count(*) FROM gone",
        batch,
    ) or 0
