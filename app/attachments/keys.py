"""Where an attachment's files live. Every key derives from the attachment id, never from
randomness, so a retried job overwrites its own half-done work instead of orphaning it."""

from __future__ import annotations

from uuid import UUID

from app.media.sniff import extension_for


def prefix(app_id: UUID, att_id: UUID) -> str:
    return f"{app_id}/{att_id}/"


def cache_key(app_id: UUID, att_id: UUID) -> str:
    return f"{prefix(app_id, att_id)}upload"


def store_key(app_id: UUID, att_id: UUID, mime_type: str) -> str:
    return f"{prefix(app_id, att_id)}original{extension_for(mime_type)}"


def derivative_key(app_id: UUID, att_id: UUID, name: str, ext: str) -> str:
    return f"{prefix(app_id, att_id)}derivatives/{name}{ext}"
