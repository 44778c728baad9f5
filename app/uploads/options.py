"""Upload options as they arrive in form fields, query strings or tus metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidInput, InvalidRecordSlot

MAX_METADATA_BYTES = 16 * 1024
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class RecordSlot:
    type: str
    id: str
    name: str


@dataclass(frozen=True)
class UploadOptions:
    profile: str | None = None
    filename: str | None = None
    record: RecordSlot | None = None
    promote: bool = True
    client_metadata: dict[str, Any] = field(default_factory=dict)


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise InvalidInput(f"{name} must be true or false, not {value!r}", field=name)


def make_options(*, profile: str | None = None, filename: str | None = None,
                 record_type: str | None = None, record_id: str | None = None,
                 record_name: str | None = None, promote: bool = True,
                 client_metadata: dict[str, Any] | None = None) -> UploadOptions:
    """Validate typed options (a JSON body); raises InvalidInput (422) on the first bad one."""
    slot_parts = [record_type or None, record_id or None, record_name or None]
    record = None
    if any(slot_parts):
        if not all(slot_parts):
            raise InvalidRecordSlot(
                "record_type, record_id and record_name must be given together, or none"
            )
        record = RecordSlot(*slot_parts)  # type: ignore[arg-type]
    client_metadata = client_metadata or {}
    if client_metadata and len(json.dumps(client_metadata, separators=(",", ":")).encode()
                               ) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes",
                           field="metadata")
    if filename:  # a path from the client's machine: keep the last component only
        filename = filename.replace("\\", "/").rsplit("/", 1)[-1][:255] or None
    return UploadOptions(profile=profile or None, filename=filename or None, record=record,
                         promote=promote, client_metadata=client_metadata)


def parse_options(fields: Mapping[str, str | None]) -> UploadOptions:
    """Validate textual options (form fields, query strings, tus metadata)."""
    client_metadata: dict[str, Any] = {}
    raw_meta = fields.get("metadata")
    if raw_meta:
        if len(raw_meta.encode()) > MAX_METADATA_BYTES:  # before parsing it
            raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes",
                               field="metadata")
        try:
            client_metadata = json.loads(raw_meta)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"metadata is not valid JSON: {e}", field="metadata") from None
        if not isinstance(client_metadata, dict):
            raise InvalidInput("metadata must be a JSON object", field="metadata")
    return make_options(
        profile=fields.get("profile"), filename=fields.get("filename"),
        record_type=fields.get("record_type"), record_id=fields.get("record_id"),
        record_name=fields.get("record_name"),
        promote=parse_bool("promote", fields.get("promote"), True),
        client_metadata=client_metadata,
    )
