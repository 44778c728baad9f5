"""Upload options as they arrive in form fields, query strings, tus metadata or a JSON body,
and the limits every upload mode shares: whatever the mode, bad options are refused (422,
naming the field) before a byte of the file is stored, never by Postgres afterwards."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from app.errors import InvalidInput, InvalidRecordSlot
from app.text import check_text, text_problem

MAX_METADATA_BYTES = 16 * 1024
# Levels of nesting of metadata, the object itself being level 1. Far below what any reader
# of it (json, asyncpg, Postgres, webhook receivers) could choke on.
MAX_METADATA_DEPTH = 16
MAX_FILENAME = 255
# The slot's three parts share one entry of the unique btree index attachments_live_slot,
# which Postgres caps at 2704 bytes: a longer entry fails the INSERT. The limits count
# characters, and even at four UTF-8 bytes each, (128 + 255 + 128) * 4 = 2044 bytes plus the
# app id and the tuple headers stay below the cap, uncompressed.
MAX_RECORD_TYPE = 128
MAX_RECORD_ID = 255
MAX_RECORD_NAME = 128
RECORD_LIMITS = {"record_type": MAX_RECORD_TYPE, "record_id": MAX_RECORD_ID,
                 "record_name": MAX_RECORD_NAME}

# where in the metadata a problem is, for the message; cut short so that building it for
# every member stays linear in the metadata's size
_PATH_CHARS = 200
# what it takes to measure nesting: an escape (two characters), a quote, a bracket. One
# token at a time, never a whole string per match: a string pattern retried from every
# escaped quote of an unclosed string takes quadratic time.
_JSON_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


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
    # the upload token the upload is made with (it may read the attachment afterwards)
    upload_token: UUID | None = None


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    """``true`` or ``false`` exactly, as the OpenAPI document states; left out: ``default``."""
    if value is None:
        return default
    if value == "true":
        return True
    if value == "false":
        return False
    raise InvalidInput(f"{name} must be true or false, not {value[:50]!r}", field=name)




def json_nests_deeper(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than ``limit``, found without parsing
    it: Python's parser recurses, and some 1000 '[' make it raise RecursionError. Text that is
    not JSON may be over-counted, never under-counted."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, decided at C speed
    depth = 0
    in_string = False
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue  # inside a string; or an escape, which outside one ends the parse
        elif token in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth = max(depth - 1, 0)  # a stray closer ends the parse; it must not hide depth
    return False


def check_metadata(metadata: Any, name: str = "metadata") -> None:
    """Refuse metadata that jsonb cannot hold (NUL, lone surrogates, NaN and infinities) or
    that nests deeper than MAX_METADATA_DEPTH. Walks without recursion."""
    todo: list[tuple[Any, int, str]] = [(metadata, 1, name)]
    while todo:
        value, depth, path = todo.pop()
        if isinstance(value, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidInput(f"{name} nests deeper than {MAX_METADATA_DEPTH} levels"
                                   f" (at {path})", field=name)
            if isinstance(value, dict):
                for key, item in value.items():
                    problem = text_problem(key) if isinstance(key, str) else None
                    if problem:
                        raise InvalidInput(f"a key in {path} {problem}", field=name)
                    todo.append((item, depth + 1, f"{path}.{key}"[:_PATH_CHARS]))
            else:
                todo.extend((item, depth + 1, f"{path}[{i}]"[:_PATH_CHARS])
                            for i, item in enumerate(value))
        elif isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise InvalidInput(f"{path} {problem}", field=name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{path} is {value}, which JSON cannot hold", field=name)


def make_options(*, profile: str | None = None, filename: str | None = None,
                 record_type: str | None = None, record_id: str | None = None,
                 record_name: str | None = None, promote: bool = True,
                 client_metadata: dict[str, Any] | None = None) -> UploadOptions:
    """Validate typed options (a JSON body); raises InvalidInput (422) on the first bad one."""
    for name, value in (("record_type", record_type), ("record_id", record_id),
                        ("record_name", record_name)):
        check_text(name, value, RECORD_LIMITS[name])
    slot_parts = [record_type or None, record_id or None, record_name or None]
    record = None
    if any(slot_parts):
        if not all(slot_parts):
            raise InvalidRecordSlot(
                "record_type, record_id and record_name must be given together, or none"
            )
        record = RecordSlot(*slot_parts)  # type: ignore[arg-type]
    client_metadata = client_metadata or {}
    # before serialising it: json.dumps recurses, and would write NaN that jsonb refuses
    check_metadata(client_metadata)
    if client_metadata and len(json.dumps(client_metadata, separators=(",", ":")).encode()
                               ) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes",
                           field="metadata")
    check_text("profile", profile)
    # A NUL is in no operating system's file names: a client bug, or the old "x.php\0.jpg"
    # trick. Refused rather than stripped, so the name stored is one the client sent.
    # (Other control characters are legal in some (macOS "Icon\r") and harmless here:
    # Content-Disposition replaces them when the file is downloaded.)
    check_text("filename", filename)
    if filename:  # a path from the client's machine: keep the last component only
        filename = filename.replace("\\", "/").rsplit("/", 1)[-1][:MAX_FILENAME] or None
    return UploadOptions(profile=profile or None, filename=filename or None, record=record,
                         promote=promote, client_metadata=client_metadata)


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """The ``metadata`` option as text: a JSON object within the size and depth limits (an
    empty text is no JSON object: refused, as the document says)."""
    if raw is None:
        return {}
    if len(raw.encode()) > MAX_METADATA_BYTES:  # before parsing it
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes",
                           field="metadata")
    if json_nests_deeper(raw, MAX_METADATA_DEPTH):  # before the parser recurses into it
        raise InvalidInput(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels",
                           field="metadata")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"metadata is not valid JSON: {e}", field="metadata") from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise InvalidInput("metadata holds a number too long to read",
                           field="metadata") from None
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be a JSON object", field="metadata")
    return metadata


def check_early_options(fields: Mapping[str, str | None]) -> None:
    """What of the options can be judged before all have arrived (multipart fields before
    the file part): each alone, the record slot's parts too, but not whether the slot is
    whole, as its other parts may come after the file."""
    parse_options({k: v for k, v in fields.items() if k not in RECORD_LIMITS})
    for name, limit in RECORD_LIMITS.items():
        check_text(name, fields.get(name), limit)


def parse_options(fields: Mapping[str, str | None]) -> UploadOptions:
    """Validate textual options (form fields, query strings, tus metadata)."""
    return make_options(
        profile=fields.get("profile"), filename=fields.get("filename"),
        record_type=fields.get("record_type"), record_id=fields.get("record_id"),
        record_name=fields.get("record_name"),
        promote=parse_bool("promote", fields.get("promote"), True),
        client_metadata=parse_metadata(fields.get("metadata")),
    )
