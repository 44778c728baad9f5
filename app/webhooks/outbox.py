"""The transactional outbox: call inside the transaction that makes the state change, so a
committed change always has its event and deliveries, whatever happens to Redis after.

Events know nothing of what they describe: the attachment events are written by
app.attachments.events, which hands this module a type and a payload."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.api_common import timestamp
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
                                   event_body(event_type, data), only_endpoint)


def event_body(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "timestamp": timestamp(datetime.now(UTC)), "data": data}
