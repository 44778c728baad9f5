"""The transactional outbox: call inside the transaction that makes the state change, so a
committed change always has its event and deliveries, whatever happens to Redis after."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attachments.links import Links
from app.attachments.schemas import present, timestamp
from app.ids import uuid7
from app.webhooks import repository as repo

EVENT_TYPES = ("attachment.cached", "attachment.stored", "attachment.failed",
               "attachment.deleted")
TEST_EVENT = "webhook.test"


async def emit(conn: asyncpg.Connection, app_id: UUID, event_type: str, data: dict[str, Any],
               *, attachment_id: UUID | None = None, only_endpoint: UUID | None = None
               ) -> list[UUID]:
    """Write the event and one delivery per subscribed endpoint; returns the delivery ids to
    enqueue after commit."""
    event_id = uuid7()
    body = {"type": event_type, "timestamp": timestamp(datetime.now(UTC)), "data": data}
    return await repo.insert_event(conn, event_id, app_id, event_type, attachment_id, body,
                                   only_endpoint)


async def emit_attachment(conn: asyncpg.Connection, event_type: str, row: Any,
                          links: Links) -> list[UUID]:
    return await emit(conn, row["app_id"], event_type, present(row, links),
                      attachment_id=row["id"])
