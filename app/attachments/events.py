"""The attachment events: an attachment's state change and its event in one transaction,
through the outbox of app.webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attachments import repository as attachments_repo
from app.attachments.links import Links
from app.attachments.schemas import present
from app.ids import uuid7
from app.webhooks import repository as events_repo
from app.webhooks.outbox import emit, event_body


async def emit_attachment(conn: asyncpg.Connection, event_type: str, row: Any,
                          links: Links) -> list[UUID]:
    return await emit(conn, row["app_id"], event_type, present(row, links.for_events()),
                      attachment_id=row["id"])


async def insert_attachment(conn: asyncpg.Connection, values: dict[str, Any], now: datetime,
                            links: Links) -> tuple[asyncpg.Record, list[UUID]]:
    """A new attachment and its attachment.cached event, in one statement: the event describes
    the row INSERT writes, which is known beforehand. Returns the row and the delivery ids to
    enqueue."""
    new = attachments_repo.new_row(values, now)
    data = present(new, links.for_events())
    row = await events_repo.change_with_event(
        conn, attachments_repo.INSERT, attachments_repo.insert_args(new), uuid7(),
        values["app_id"], "attachment.cached", values["id"], event_body("attachment.cached", data))
    assert row is not None  # an INSERT ... VALUES returns its row or raises
    return row, list(row["delivery_ids"])
