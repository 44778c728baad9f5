"""The tus 1.0 protocol as Stowage speaks it: versions and extensions, its errors, and the
parsing of its headers (lengths, checksums, Upload-Metadata) into upload options. No state and
no I/O: tus.py keeps the uploads, tus_routes.py the HTTP."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from app.errors import (
    InvalidInput,
    MalformedRequest,
    NotFound,
    StowageError,
    UnsupportedMediaType,
)
from app.uploads.options import UploadOptions, make_options, parse_options

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation", "creation-with-upload", "termination", "checksum", "expiration")
CHECKSUM_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# Upload-Metadata keys that mean something here; others (Uppy's name, filetype, ...) are kept
# in the echoed header but otherwise ignored.
METADATA_KEYS = ("filename", "profile", "record_type", "record_id", "record_name", "promote",
                 "metadata")



# --- errors ------------------------------------------------------------------------------------

class TusUploadNotFound(NotFound):
    slug, title = "tus-upload-not-found", "Upload not found"


class TusUploadGone(StowageError):
    status, slug, title = 410, "tus-upload-gone", "Upload expired or lost"


class TusOffsetMismatch(StowageError):
    status, slug, title = 409, "tus-offset-mismatch", "Upload-Offset does not match"


class TusUploadLocked(StowageError):
    status, slug, title = 423, "tus-upload-locked", "Upload is being written by another request"


class TusVersionUnsupported(StowageError):
    status, slug, title = 412, "tus-version-unsupported", "Tus-Resumable 1.0.0 is required"


class TusChecksumMismatch(StowageError):
    status, slug, title = 460, "tus-checksum-mismatch", "Checksum mismatch"


class TusWrongContentType(UnsupportedMediaType):
    slug, title = "tus-content-type", "PATCH needs Content-Type: application/offset+octet-stream"


# --- protocol parsing --------------------------------------------------------------------------

@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def new(self) -> Any:
        return CHECKSUM_ALGORITHMS[self.algorithm]()


def parse_checksum(header: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; unsupported or malformed: 400."""
    if not header or not header.strip():
        return None
    algorithm, _, value = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise MalformedRequest(
            f"unsupported checksum algorithm {algorithm!r}; supported:"
            f" {', '.join(CHECKSUM_ALGORITHMS)}", header="Upload-Checksum")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest("Upload-Checksum: the digest is not base64",
                               header="Upload-Checksum") from None
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]().digest_size:
        raise MalformedRequest(f"Upload-Checksum: not a {algorithm} digest",
                               header="Upload-Checksum")
    return Checksum(algorithm, digest)


# the largest length or offset: what Postgres bigint holds, and what the OpenAPI document
# states as the headers' maximum
MAX_LENGTH_HEADER = 2**63 - 1


def parse_length(name: str, value: str | None) -> int:
    """A non-negative integer header (Upload-Length, Upload-Offset); 400 otherwise."""
    if value is None:
        raise MalformedRequest(f"the {name} header is required", header=name)
    v = value.strip()
    if not v.isdigit() or not v.isascii() or len(v) > 19 or int(v) > MAX_LENGTH_HEADER:
        raise MalformedRequest(f"{name} must be a non-negative integer, not {value!r}",
                               header=name)
    return int(v)


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """``Upload-Metadata: key base64,key2 base64,flag``; anything malformed: 422."""
    out: dict[str, str | None] = {}
    if not header:
        return out
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        parts = pair.split(" ")
        key = parts[0]
        if len(parts) > 2 or not key:
            raise InvalidInput(f"Upload-Metadata: malformed pair {pair[:50]!r}",
                               field="Upload-Metadata")
        if key in out:
            raise InvalidInput(f"Upload-Metadata: {key!r} given twice", field="Upload-Metadata")
        value = None
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise InvalidInput(f"Upload-Metadata: the value of {key!r} is not base64 UTF-8",
                                   field="Upload-Metadata") from None
        out[key] = value
    return out


def options_from_metadata(meta: dict[str, str | None]) -> UploadOptions:
    """The upload options the metadata names, validated like any other upload's (422)."""
    fields = {k: meta.get(k) for k in METADATA_KEYS}
    if not fields["filename"] and meta.get("name"):
        fields["filename"] = meta["name"]  # what Uppy and tus-js-client examples send
    return parse_options(fields)


def options_json(o: UploadOptions) -> dict[str, Any]:
    return {
        "profile": o.profile, "filename": o.filename, "promote": o.promote,
        "record": [o.record.type, o.record.id, o.record.name] if o.record else None,
        "client_metadata": o.client_metadata,
        "upload_token": str(o.upload_token) if o.upload_token else None,
    }


def options_of(row: asyncpg.Record) -> UploadOptions:
    """The upload's options, checked again: one created before a limit existed is refused
    (InvalidInput) like a refused file, instead of failing its completion for good."""
    o = row["options"]
    record_type, record_id, record_name = o["record"] or (None, None, None)
    options = make_options(
        profile=o["profile"], filename=o["filename"], promote=o["promote"],
        record_type=record_type, record_id=record_id, record_name=record_name,
        client_metadata=o["client_metadata"],
    )
    if o.get("upload_token"):
        options = dataclasses.replace(options, upload_token=UUID(o["upload_token"]))
    return options
