"""The public attachment object (API.md) and its rendering from a row."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from app.api_common import timestamp
from app.attachments.links import Links

State = Literal["cached", "stored", "failed", "deleted"]


class RecordRef(BaseModel):
    type: str
    id: str
    name: str


class ErrorInfo(BaseModel):
    code: str
    detail: str


class VariantUsage(BaseModel):
    count: int = Field(description="Image variants rendered on request and kept")
    bytes: int = Field(description="Their bytes in the store")


class AttachmentOut(BaseModel):
    id: UUID
    state: State
    profile: str
    filename: str | None
    mime_type: str
    size: int = Field(description="Bytes stored (for a profile that strips metadata: the"
                      " file as stored, without it)")
    sha256: str = Field(description="SHA-256 of the bytes stored, hex")
    metadata: dict[str, Any] = Field(description=(
        "What was read from the file. Images: `width` and `height` as displayed, `orientation`"
        " (EXIF, 1-8). `stripped`: the kinds of metadata removed from the stored original"
        " (`exif`, `gps`, `xmp`, `iptc`, `comment`, `text`, `thumbnail`, `appN`)"))
    client_metadata: dict[str, Any]
    record: RecordRef | None
    derivatives: dict[str, dict[str, Any]]
    variants: VariantUsage
    url: str | None
    error: ErrorInfo | None
    generation: int
    created_at: datetime
    updated_at: datetime
    stored_at: datetime | None


class AttachmentList(BaseModel):
    items: list[AttachmentOut]
    next_cursor: str | None


def present(row: Any, links: Links) -> dict[str, Any]:
    """The attachment object as clients and webhook receivers see it."""
    live = row["state"] in ("cached", "stored")
    public = row["profile"] in links.public_profiles
    record = None
    if row["record_type"] is not None:
        record = {"type": row["record_type"], "id": row["record_id"], "name": row["record_name"]}
    return {
        "id": str(row["id"]),
        "state": row["state"],
        "profile": row["profile"],
        "filename": row["filename"],
        "mime_type": row["mime_type"],
        "size": row["size"],
        "sha256": row["sha256"],
        "metadata": row["metadata"],
        "client_metadata": row["client_metadata"],
        "record": record,
        "derivatives": {
            name: {**{k: v for k, v in d.items() if k != "key"},
                   "url": links.derivative_url(row["id"], name, row["generation"],
                                               public=public) if live else None}
            for name, d in (row["derivatives"] or {}).items()
        },
        "variants": {"count": row["variants_count"], "bytes": row["variants_bytes"]},
        "url": links.content_url(row["id"], public=public) if live else None,
        "error": row["error"],
        # lets a receiver drop an event older than one it already handled
        "generation": row["generation"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
        "stored_at": timestamp(row["stored_at"]),
    }
