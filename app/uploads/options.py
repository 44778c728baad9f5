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


def parse_options(fields: Mapping[str, str | None]) -> UploadOptions:
    """Validate the textual options; raises InvalidInput (422) on the first bad one."""
    slot_parts = [fields.get(k) or None for k in ("record_type", "record_id", "record_name")]
    record = None
    if any(slot_parts):
        if not all(slot_parts):
            raise InvalidRecordSlot(
                "record_type, record_id and record_name must be given together, or none"
            )
        record = RecordSlot(*slot_parts)  # type: ignore[arg-type]
    client_metadata: dict[str, Any] = {}
    raw_meta = fields.get("metadata")
    if raw_meta:
        if len(raw_meta.encode()) > MAX_METADATA_BYTES:
            raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes",
                               field="metadata")
        try:
            client_metadata = json.loads(raw_meta)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"metadata is not valid JSON: {e}", field="metadata") from None
        if not isinstance(client_metadata, dict):
            raise InvalidInput("metadata must be a JSON object", field="metadata")
    filename = fields.get("filename") or None
    if filename is not None:
        filename = filename.replace("\\", "/").rsplit("/", 1)[-1][:255] or None
    return UploadOptions(
        profile=fields.get("profile") or None,
        filename=filename,
        record=record,
        promote=parse_bool("promote", fields.get("promote"), True),
        client_metadata=client_metadata,
    )
