"""Request and response bodies of the webhook endpoints API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.api_common import timestamp

EventType = Literal["attachment.cached", "attachment.stored", "attachment.updated",
                    "attachment.failed", "attachment.deleted"]


URL_PATTERN = r"^https?://[^/?#\s]+"


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048, pattern=URL_PATTERN)
    events: list[EventType] | None = None
    description: str | None = Field(None, max_length=500)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, max_length=2048, pattern=URL_PATTERN)
    events: list[EventType] | None = None
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None
    rotate_secret: bool = Field(False, description="issue a new secret; the one it replaces"
                                " keeps signing beside it (a second signature) for"
                                " STOWAGE_WEBHOOK_SECRET_OVERLAP seconds, until"
                                " previous_secret_expires_at")


class EndpointOut(BaseModel):
    id: UUID
    url: str
    events: list[str] | None
    description: str | None
    secret: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    last_success_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        None, description="after a rotation: until when the replaced secret signs too")
    created_at: datetime
    updated_at: datetime


class EndpointList(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    id: UUID
    event_id: UUID
    event_type: str
    attachment_id: UUID | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


def present_endpoint(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "events": row["events"],
        "description": row["description"],
        "secret": row["secret"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "failing_since": timestamp(row["failing_since"]),
        "last_success_at": timestamp(row["last_success_at"]),
        "previous_secret_expires_at": timestamp(row["previous_secret_expires_at"]),
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
    }


def present_delivery(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "attachment_id": str(row["attachment_id"]) if row["attachment_id"] else None,
        "status": row["status"],
        "attempts": row["attempts"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        # a pending delivery's next attempt; none once it is final
        "next_attempt_at": timestamp(row["next_attempt_at"]) if row["status"] == "pending"
        else None,
        "delivered_at": timestamp(row["delivered_at"]),
        "created_at": timestamp(row["created_at"]),
    }
