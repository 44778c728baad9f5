"""SQL for the attachments table."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app import db
from app.sql import Where

COLUMNS = (
    "id, app_id, profile, state, storage, key, filename, mime_type, size, sha256, metadata,"
    " client_metadata, derivatives, record_type, record_id, record_name, generation, error,"
    " promote_requested_at, created_at, updated_at, stored_at, expires_at, deleted_at,"
    " purged_at, cache_purged_at, variants_count, variants_bytes, upload_token_id"
)


def new_row(values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A new attachment's whole row, made at ``now``: INSERT writes every column from it, so
    the attachment.cached event, written in the same statement before the row exists, is
    this row as it is (none of the table's defaults are used, so none is repeated here)."""
    return {
        "id": values["id"], "app_id": values["app_id"], "profile": values["profile"],
        "state": "cached", "storage": "cache", "key": values["key"],
        "filename": values["filename"], "mime_type": values["mime_type"],
        "size": values["size"], "sha256": values["sha256"], "metadata": values["metadata"],
        "client_metadata": values["client_metadata"], "derivatives": {},
        "record_type": values["record_type"], "record_id": values["record_id"],
        "record_name": values["record_name"], "generation": 1, "error": None,
        "promote_requested_at": now if values["promote"] else None,
        "created_at": now, "updated_at": now, "stored_at": None,
        "expires_at": None if values["promote"] else now + timedelta(seconds=values["cache_ttl"]),
        "deleted_at": None, "purged_at": None, "cache_purged_at": None,
        "variants_count": 0, "variants_bytes": 0,
        "upload_token_id": values.get("upload_token_id"),
    }


_COLUMN_NAMES = tuple(name.strip() for name in COLUMNS.split(","))
INSERT = (
    f"INSERT INTO attachments ({COLUMNS})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMN_NAMES) + 1))})"
    f" RETURNING {COLUMNS}"
)


def insert_args(row: dict[str, Any]) -> list[Any]:
    """The parameters of INSERT for a `new_row`."""
    return [row[name] for name in _COLUMN_NAMES]


async def lock_slot(
    conn: asyncpg.Connection, app_id: UUID, record_type: str, record_id: str, record_name: str
) -> None:
    """Serialise writers of one slot until the transaction ends: the last one wins cleanly."""
    name = chr(31).join((str(UUID(str(app_id))), record_type, record_id, record_name))
    await db.advisory_xact_lock(conn, name, seed=1)


async def newer_stored_in_slot(conn: asyncpg.Connection, row: asyncpg.Record
                               ) -> asyncpg.Record | None:
    """The slot's stored attachment, when it was uploaded after `row`: `row` lost."""
    return await conn.fetchrow(
        "SELECT id FROM attachments WHERE app_id = $1 AND record_type = $2 AND record_id = $3"
        " AND record_name = $4 AND state = 'stored' AND (created_at, id) > ($5, $6)",
        row["app_id"], row["record_type"], row["record_id"], row["record_name"],
        row["created_at"], row["id"],
    )


async def lock_if_cached(conn: asyncpg.Connection, att_id: UUID, cached_key: str) -> bool:
    """Lock the row for the transaction when it is still the cached upload it was."""
    return bool(await conn.fetchval(
        "SELECT true FROM attachments WHERE id = $1 AND state = 'cached' AND key = $2"
        " FOR UPDATE", att_id, cached_key))


async def replace_older_in_slot(conn: asyncpg.Connection, row: asyncpg.Record
                                ) -> list[asyncpg.Record]:
    """`row` just became stored: the slot's attachments uploaded before it, the current one
    and pending ones alike, are deleted (error.code replaced)."""
    error = {"code": "replaced", "detail": f"replaced by {row['id']}"}
    return await conn.fetch(
        "UPDATE attachments SET state = 'deleted', deleted_at = now(), updated_at = now(),"
        " generation = generation + 1, error = $7"
        " WHERE app_id = $1 AND record_type = $2 AND record_id = $3 AND record_name = $4"
        " AND state IN ('stored', 'cached') AND (created_at, id) < ($5, $6)"
        f" RETURNING {COLUMNS}",
        row["app_id"], row["record_type"], row["record_id"], row["record_name"],
        row["created_at"], row["id"], error,
    )


async def get(conn: asyncpg.Connection, att_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM attachments WHERE id = $1", att_id)


async def get_for_app(
    conn: asyncpg.Connection, app_id: UUID, att_id: UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM attachments WHERE id = $1 AND app_id = $2", att_id, app_id
    )


# every state an attachment can be in (the table's CHECK), in the order pages show them
STATES = ("cached", "stored", "failed", "deleted")


async def list_for_app(
    conn: asyncpg.Connection,
    app_id: UUID,
    *,
    state: str | None,
    record_type: str | None,
    record_id: str | None,
    record_name: str | None,
    before: UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    where = Where()  # only the filters given: see app.sql
    where.add("app_id = {}", app_id)
    where.add_known("state", state, STATES)
    for column, value in (("record_type", record_type), ("record_id", record_id),
                          ("record_name", record_name)):
        where.add_if(column + " = {}", value)
    where.add_if("id < {}", before)
    return await conn.fetch(
        f"SELECT {COLUMNS} FROM attachments WHERE {where.sql()}"
        f" ORDER BY id DESC LIMIT {int(limit)}",
        *where.args,
    )


async def request_promotion(conn: asyncpg.Connection, att_id: UUID) -> asyncpg.Record | None:
    """Mark a cached attachment for promotion; returns the row whatever its state."""
    row = await conn.fetchrow(
        "UPDATE attachments SET promote_requested_at = now(), expires_at = NULL,"
        " updated_at = now(), generation = generation + 1"
        " WHERE id = $1 AND state = 'cached' AND promote_requested_at IS NULL"
        f" RETURNING {COLUMNS}",
        att_id,
    )
    return row or await get(conn, att_id)


# metadata with "scan" set to $N when $N is not NULL (a scanning profile's verdict)
def _with_scan(param: str) -> str:
    return (f"CASE WHEN {param}::jsonb IS NULL THEN metadata"
            f" ELSE coalesce(metadata, '{{}}'::jsonb) || jsonb_build_object('scan', {param}::jsonb)"
            " END")


# `metadata` (an SQL expression) with the keys of $N merged in when $N is not NULL
def _with_facts(metadata: str, param: str) -> str:
    return (f"CASE WHEN {param}::jsonb IS NULL THEN {metadata}"
            f" ELSE coalesce({metadata}, '{{}}'::jsonb) || {param}::jsonb END")


async def mark_stored(
    conn: asyncpg.Connection,
    att_id: UUID,
    cached_key: str,
    store_key: str,
    derivatives: dict[str, Any],
    scan: dict[str, Any] | None = None,
    facts: dict[str, Any] | None = None,
) -> asyncpg.Record | None:
    """The compare-and-set at the heart of atomic promotion: None if the row moved on.
    ``facts`` (a preview's: pages, duration, thumbhash...) are merged into the metadata."""
    return await conn.fetchrow(
        "UPDATE attachments SET state = 'stored', storage = 'store', key = $3,"
        " derivatives = $4, stored_at = now(), updated_at = now(), generation = generation + 1,"
        f" metadata = {_with_facts(_with_scan('$5'), '$6')}"
        " WHERE id = $1 AND state = 'cached' AND key = $2"
        f" RETURNING {COLUMNS}",
        att_id, cached_key, store_key, derivatives, scan, facts or None,
    )


async def request_rescan(conn: asyncpg.Connection, att_id: UUID) -> asyncpg.Record | None:
    """Ask for a stored attachment's file to be scanned again; the row (None: not stored)."""
    return await conn.fetchrow(
        "UPDATE attachments SET rescan_requested_at = coalesce(rescan_requested_at, now())"
        f" WHERE id = $1 AND state = 'stored' RETURNING {COLUMNS}, rescan_requested_at",
        att_id,
    )


async def rescanned(conn: asyncpg.Connection, att_id: UUID, generation: int,
                    scan: dict[str, Any] | None) -> asyncpg.Record | None:
    """The rescan is done: its verdict (if any) kept, the request cleared."""
    return await conn.fetchrow(
        f"UPDATE attachments SET rescan_requested_at = NULL, metadata = {_with_scan('$3')}"
        f" WHERE id = $1 AND generation = $2 RETURNING {COLUMNS}",
        att_id, generation, scan,
    )


async def mark_infected_stored(conn: asyncpg.Connection, att_id: UUID, generation: int,
                               error: dict[str, str], scan: dict[str, Any]
                               ) -> asyncpg.Record | None:
    """A stored attachment a rescan found infected becomes failed (compare-and-set)."""
    return await conn.fetchrow(
        "UPDATE attachments SET state = 'failed', error = $3, rescan_requested_at = NULL,"
        f" metadata = {_with_scan('$4')}, updated_at = now(), generation = generation + 1"
        " WHERE id = $1 AND state = 'stored' AND generation = $2"
        f" RETURNING {COLUMNS}",
        att_id, generation, error, scan,
    )


async def stale_rescans(conn: asyncpg.Connection, older_than_s: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, generation FROM attachments WHERE rescan_requested_at IS NOT NULL"
        " AND rescan_requested_at < now() - make_interval(secs => $1)"
        " ORDER BY rescan_requested_at LIMIT 1000",
        older_than_s,
    )


async def swap_derivatives(conn: asyncpg.Connection, att_id: UUID, generation: int,
                           derivatives: dict[str, Any],
                           facts: dict[str, Any] | None = None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE attachments SET derivatives = $3, updated_at = now(),"
        f" generation = generation + 1, metadata = {_with_facts('metadata', '$4')}"
        " WHERE id = $1 AND state = 'stored' AND generation = $2"
        f" RETURNING {COLUMNS}",
        att_id, generation, derivatives, facts or None,
    )


async def mark_failed(
    conn: asyncpg.Connection, att_id: UUID, cached_key: str, error: dict[str, str],
    scan: dict[str, Any] | None = None,
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE attachments SET state = 'failed', error = $3, updated_at = now(),"
        f" generation = generation + 1, metadata = {_with_scan('$4')}"
        " WHERE id = $1 AND state = 'cached' AND key = $2"
        f" RETURNING {COLUMNS}",
        att_id, cached_key, error, scan,
    )


async def mark_deleted(
    conn: asyncpg.Connection, att_id: UUID, error: dict[str, str] | None = None
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE attachments SET state = 'deleted', deleted_at = now(), updated_at = now(),"
        " generation = generation + 1, error = coalesce($2, error)"
        f" WHERE id = $1 AND state <> 'deleted' RETURNING {COLUMNS}",
        att_id, error,
    )


async def mark_purged(conn: asyncpg.Connection, att_id: UUID) -> None:
    await conn.execute(
        "UPDATE attachments SET purged_at = now() WHERE id = $1 AND state = 'deleted'", att_id
    )


async def mark_cache_purged(conn: asyncpg.Connection, att_id: UUID) -> None:
    await conn.execute(
        "UPDATE attachments SET cache_purged_at = now()"
        " WHERE id = $1 AND state IN ('stored', 'failed') AND cache_purged_at IS NULL",
        att_id,
    )


async def expire_cached(
    conn: asyncpg.Connection, now: datetime | None = None
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "UPDATE attachments SET state = 'deleted', deleted_at = now(), updated_at = now(),"
        " generation = generation + 1,"
        " error = jsonb_build_object('code', 'expired', 'detail',"
        "   'not promoted within the cache TTL of its profile')"
        " WHERE state = 'cached' AND promote_requested_at IS NULL"
        " AND expires_at < coalesce($1, now())"
        f" RETURNING {COLUMNS}",
        now,
    )


def _not_waiting(kind: str) -> str:
    """SQL: no attempt at this work is waiting out its backoff (app.attachments.work)."""
    return ("NOT EXISTS (SELECT 1 FROM attachment_work w WHERE w.attachment_id = attachments.id"
            f" AND w.kind = '{kind}' AND w.next_attempt_at > now())")


async def stale_promotions(conn: asyncpg.Connection, older_than_s: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, generation FROM attachments WHERE state = 'cached'"
        " AND promote_requested_at IS NOT NULL"
        " AND updated_at < now() - make_interval(secs => $1)"
        f" AND {_not_waiting('promote')} ORDER BY updated_at LIMIT 1000",
        older_than_s,
    )


async def unpurged_deleted(conn: asyncpg.Connection, older_than_s: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id FROM attachments WHERE state = 'deleted' AND purged_at IS NULL"
        " AND deleted_at < now() - make_interval(secs => $1)"
        f" AND {_not_waiting('destroy')} ORDER BY deleted_at LIMIT 1000",
        older_than_s,
    )


async def cache_leftovers(conn: asyncpg.Connection, older_than_s: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id FROM attachments WHERE state IN ('stored', 'failed') AND cache_purged_at IS NULL"
        " AND updated_at < now() - make_interval(secs => $1)"
        f" AND {_not_waiting('purge_cache')} ORDER BY updated_at LIMIT 1000",
        older_than_s,
    )


async def try_lock_sweep(conn: asyncpg.Connection) -> bool:
    """Only one worker sweeps at a time; the lock ends with the transaction."""
    return await db.try_advisory_xact_lock(conn, "sweep")


def _attachment_lock(att_id: UUID) -> str:
    return f"attachment:{UUID(str(att_id))}"  # as Postgres' uuid::text writes it


async def lock_attachment(conn: asyncpg.Connection, att_id: UUID) -> None:
    """Serialise the worker's jobs on one attachment (promote, destroy) across processes.

    Session-level, so it is released if the worker dies and its connection drops.
    """
    await db.advisory_lock(conn, _attachment_lock(att_id))


async def try_lock_attachment(conn: asyncpg.Connection, att_id: UUID) -> bool:
    """`lock_attachment` without waiting (fsck): held, no promotion, reprocess or destroy of
    this attachment runs meanwhile."""
    return await db.try_advisory_lock(conn, _attachment_lock(att_id))


async def unlock_attachment(conn: asyncpg.Connection, att_id: UUID) -> None:
    await db.advisory_unlock(conn, _attachment_lock(att_id))
