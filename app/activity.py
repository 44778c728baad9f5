"""The activity log of attachments: the steps the events outbox does not describe (a
promotion started or aborted, a reprocess, an operator's action), for the timeline.

Best kept in the same transaction as the change it describes, when there is one; an entry is
a record for people, never read to decide anything.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

# Limits what one attachment's timeline can pull in: a job retried forever must not make the
# page unbounded.
MAX_ENTRIES = 1000


async def record(conn: asyncpg.Connection, attachment_id: UUID, kind: str,
                 detail: dict[str, Any] | None = None) -> None:
    """Append an entry, e.g. ``record(conn, att_id, "promotion.started")``."""
    await conn.execute(
        "INSERT INTO attachment_activity (attachment_id, kind, detail) VALUES ($1, $2, $3)",
        attachment_id, kind, detail,
    )


async def list_for(conn: asyncpg.Connection, attachment_id: UUID) -> list[asyncpg.Record]:
    """An attachment's entries, oldest first."""
    return await conn.fetch(
        "SELECT id, at, kind, detail FROM attachment_activity WHERE attachment_id = $1"
        " ORDER BY at, id LIMIT $2",
        attachment_id, MAX_ENTRIES,
    )
