"""The transactional outbox: call inside the transaction that makes the state change, so a
committed change always has its event and deliveries, whatever happens to Redis after."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attachments import repository as attachments_repo
from app.attachments.links import Links
from app.attachments.schemas import present, timestamp
from app.ids import uuid7
from app.webhooks import repository as repo

EVENT_TYPES = ("attachment.cached", "attachment.stored", "attachment.updated",
               "attachment.failed", "attachment.deleted")
TEST_EVENT = "webhook.test"


async def emit(conn: asyncpg.Connection, app_id: UUID, event_type: str, data: dict[str, Any],
               *, attachment_id: UUID | None = None, only_endpoint: UUID | None = None
               ) -> list[UUID]:
    """Write the event and one delivery per subscribed endpoint; returns the delivery ids to
    enqueue after commit."""
    return await repo.insert_event(conn, uuid7(), app_id, event_type, attachment_id,
                                   _body(event_type, data), only_endpoint)


def _body(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "timestamp": timestamp(datetime.now(UTC)), "data": data}


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
    row = await repo.change_with_event(
        conn, attachments_repo.INSERT, attachments_repo.insert_args(new), uuid7(),
        values["app_id"], "attachment.cached", values["id"], _body("attachment.cached", data))
    assert row is not None  # an INSERT ... VALUES returns its row or raises
    return row, list(row["delivery_ids"])
