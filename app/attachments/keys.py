"""Where an attachment's files live. Every key derives from the attachment id, never from
randomness, so a retried job overwrites its own half-done work instead of orphaning it."""

from __future__ import annotations

import hashlib
from uuid import UUID

from app.ids import parse_uuid
from app.media.sniff import extension_for


def prefix(app_id: UUID, att_id: UUID) -> str:
    return f"{app_id}/{att_id}/"


def cache_key(app_id: UUID, att_id: UUID) -> str:
    return f"{prefix(app_id, att_id)}upload"


def cache_key_id(app_id: UUID, key: str) -> UUID | None:
    """The attachment id of ``key`` when it is exactly ``cache_key(app_id, id)``, else None:
    how a key a client hands back is checked before any storage sees it."""
    app, _, rest = key.partition("/")
    att, _, name = rest.partition("/")
    att_id = parse_uuid(att) if app == str(app_id) and name == "upload" else None
    if att_id is None or cache_key(app_id, att_id) != key:  # the canonical spelling only
        return None
    return att_id


def store_key(app_id: UUID, att_id: UUID, mime_type: str) -> str:
    return f"{prefix(app_id, att_id)}original{extension_for(mime_type)}"


def derivative_key(app_id: UUID, att_id: UUID, name: str, ext: str) -> str:
    return f"{prefix(app_id, att_id)}derivatives/{name}{ext}"


def variants_prefix(app_id: UUID, att_id: UUID, generation: int) -> str:
    """Where an attachment's image variants of one generation live (a new generation, after
    a reprocess, renders its own)."""
    return f"{prefix(app_id, att_id)}variants/g{generation}/"


def variant_key(app_id: UUID, att_id: UUID, generation: int, params: str, ext: str) -> str:
    """One key per normalised parameter set: a digest, as the parameters may hold any
    characters a key may not."""
    digest = hashlib.sha256(params.encode()).hexdigest()[:32]
    return f"{variants_prefix(app_id, att_id, generation)}{digest}{ext}"
