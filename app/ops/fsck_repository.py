"""SQL for `stowage fsck`: who owns the objects of a batch of keys, the temporary tables
that find attachments whose files were not listed, and the compare-and-set that fails them.

Every function here runs on the one connection fsck holds for the whole run: the temporary
tables and the advisory locks belong to that session.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attachments.repository import COLUMNS as ATTACHMENT_COLUMNS

# The anti-join over every live attachment may take far longer than the pool's command timeout.
LONG_QUERY_S = 6 * 3600.0

_OWNER_COLUMNS = (
    "id, app_id, state, storage, key, generation, derivatives, purged_at, cache_purged_at"
)


async def tables_present(conn: asyncpg.Connection) -> set[str]:
    """Which optional tables exist (tus_uploads and presigned_uploads come with migrations
    an older database may not have yet)."""
    row = await conn.fetchrow(
        "SELECT to_regclass('presigned_uploads') IS NOT NULL AS presigned_uploads,"
        " to_regclass('tus_uploads') IS NOT NULL AS tus_uploads"
    )
    return {name for name, present in row.items() if present}


async def db_now(conn: asyncpg.Connection) -> datetime:
    return await conn.fetchval("SELECT clock_timestamp()")


# --- ownership of one batch of keys ------------------------------------------------------------

async def attachments_by_id(conn: asyncpg.Connection, ids: list[UUID]
                            ) -> list[asyncpg.Record]:
    if not ids:
        return []
    return await conn.fetch(
        f"SELECT {_OWNER_COLUMNS} FROM attachments WHERE id = ANY($1::uuid[])", ids
    )


async def presigns_by_attachment_id(conn: asyncpg.Connection, ids: list[UUID]
                                    ) -> list[asyncpg.Record]:
    if not ids:
        return []
    return await conn.fetch(
        "SELECT attachment_id, app_id, key FROM presigned_uploads"
        " WHERE attachment_id = ANY($1::uuid[])",
        ids,
    )


async def tus_by_id(conn: asyncpg.Connection, ids: list[UUID]) -> list[asyncpg.Record]:
    if not ids:
        return []
    return await conn.fetch(
        "SELECT id, app_id, state, attachment_id FROM tus_uploads WHERE id = ANY($1::uuid[])",
        ids,
    )


async def tus_completing_for(conn: asyncpg.Connection, attachment_ids: list[UUID]
                             ) -> list[asyncpg.Record]:
    """tus uploads between their last byte and their attachment's row: they own the cache
    key of the attachment they are about to make."""
    if not attachment_ids:
        return []
    return await conn.fetch(
        "SELECT id, app_id, state, attachment_id FROM tus_uploads"
        " WHERE attachment_id = ANY($1::uuid[]) AND state = 'completing'",
        attachment_ids,
    )


# --- what was listed, and what should have been ----------------------------------------------

async def create_scan_tables(conn: asyncpg.Connection) -> None:
    """Session-local tables: the live files the listing found, and the ones it did not."""
    await conn.execute(
        "DROP TABLE IF EXISTS pg_temp.fsck_seen;"
        " DROP TABLE IF EXISTS pg_temp.fsck_missing;"
        " CREATE TEMP TABLE fsck_seen (storage text NOT NULL, key text NOT NULL);"
        " CREATE TEMP TABLE fsck_missing (id uuid NOT NULL, app_id uuid NOT NULL,"
        "  state text NOT NULL, row_key text NOT NULL, generation integer NOT NULL,"
        "  storage text NOT NULL, key text NOT NULL)"
    )


async def drop_scan_tables(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "DROP TABLE IF EXISTS pg_temp.fsck_seen; DROP TABLE IF EXISTS pg_temp.fsck_missing"
    )


async def add_seen(conn: asyncpg.Connection, rows: Iterable[tuple[str, str]]) -> None:
    await conn.copy_records_to_table("fsck_seen", records=list(rows),
                                     columns=("storage", "key"), schema_name="pg_temp")


async def live_attachments(conn: asyncpg.Connection, scan_started: datetime) -> int:
    """How many attachments collect_missing looks at: the ones that should have files."""
    return await conn.fetchval(
        "SELECT count(*) FROM attachments WHERE state IN ('cached', 'stored')"
        " AND updated_at < $1",
        scan_started, timeout=LONG_QUERY_S,
    )


async def collect_missing(conn: asyncpg.Connection, scan_started: datetime) -> int:
    """Every file a live attachment (cached: its cache object; stored: its original and each
    derivative) should have and the listing did not find. Rows changed since the scan began
    are left out: their files may have moved after the listing passed them."""
    await conn.execute("ANALYZE pg_temp.fsck_seen", timeout=LONG_QUERY_S)
    status = await conn.execute(
        "INSERT INTO fsck_missing (id, app_id, state, row_key, generation, storage, key)"
        " WITH live AS ("
        "  SELECT id, app_id, state, storage, key, generation, derivatives FROM attachments"
        "  WHERE state IN ('cached', 'stored') AND updated_at < $1"
        " ), expected AS ("
        "  SELECT id, app_id, state, key AS row_key, generation, storage, key FROM live"
        "  UNION ALL"
        "  SELECT l.id, l.app_id, l.state, l.key, l.generation, 'store', d.value->>'key'"
        "  FROM live l CROSS JOIN LATERAL jsonb_each(l.derivatives) d"
        "  WHERE l.state = 'stored' AND jsonb_typeof(d.value) = 'object'"
        "   AND d.value->>'key' IS NOT NULL"
        " )"
        " SELECT e.* FROM expected e WHERE NOT EXISTS ("
        "  SELECT 1 FROM fsck_seen s WHERE s.storage = e.storage AND s.key = e.key)",
        scan_started, timeout=LONG_QUERY_S,
    )
    await conn.execute("CREATE INDEX ON pg_temp.fsck_missing (id)", timeout=LONG_QUERY_S)
    return int(status.rsplit(" ", 1)[-1])


async def missing_page(conn: asyncpg.Connection, after: UUID | None, limit: int
                       ) -> list[asyncpg.Record]:
    """The missing files of the next `limit` attachments after `after`, by attachment id."""
    return await conn.fetch(
        "SELECT id, app_id, state, row_key, generation, storage, key FROM fsck_missing"
        " WHERE id IN (SELECT DISTINCT id FROM fsck_missing"
        "  WHERE id > $1 ORDER BY id LIMIT $2)"
        " ORDER BY id, storage, key",
        after or UUID(int=0), limit,
    )


# --- repairs -------------------------------------------------------------------------------

async def get_attachment(conn: asyncpg.Connection, att_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_OWNER_COLUMNS} FROM attachments WHERE id = $1", att_id)


async def row_versions(conn: asyncpg.Connection, ids: list[UUID]) -> list[asyncpg.Record]:
    """What tells whether a row moved on (state, key, generation), nothing to decode: fsck
    reads it for up to every attachment."""
    return await conn.fetch(
        "SELECT id, state, key, generation FROM attachments WHERE id = ANY($1)", ids)


async def mark_file_missing(conn: asyncpg.Connection, att_id: UUID, state: str, key: str,
                            generation: int, error: dict[str, Any]) -> asyncpg.Record | None:
    """cached/stored -> failed, only if the row is still exactly what fsck checked."""
    return await conn.fetchrow(
        "UPDATE attachments SET state = 'failed', error = $5, updated_at = now(),"
        " generation = generation + 1"
        " WHERE id = $1 AND state = $2 AND key = $3 AND generation = $4"
        f" RETURNING {ATTACHMENT_COLUMNS}",
        att_id, state, key, generation, error,
    )
