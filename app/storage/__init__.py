"""Pluggable object storage: a local directory (`file://`) or an S3 bucket (`s3://`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from .base import (
    Leftover,
    ObjectInfo,
    Storage,
    StorageAccessDenied,
    StorageFull,
    StorageObjectNotFound,
    content_disposition,
    open_read,
    validate_key,
)
from .filesystem import FilesystemStorage
from .identity import (
    MARKER_KEY,
    MarkerUnreadable,
    StorageIdentity,
    has_data,
    is_reserved,
    read_marker,
    write_marker,
)
from .s3 import S3Storage, S3StorageError, open_s3_client

__all__ = [
    "MARKER_KEY",
    "FilesystemStorage",
    "Leftover",
    "MarkerUnreadable",
    "ObjectInfo",
    "S3Storage",
    "S3StorageError",
    "Storage",
    "StorageAccessDenied",
    "StorageFull",
    "StorageIdentity",
    "StorageObjectNotFound",
    "content_disposition",
    "has_data",
    "is_reserved",
    "open_read",
    "open_s3_client",
    "parse_storage_url",
    "read_marker",
    "storage_from_url",
    "validate_key",
    "write_marker",
]

# Permissive on purpose: S3-compatible servers accept names that AWS itself refuses.
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_storage_url(url: str) -> tuple[Literal["file", "s3"], str, str]:
    """Split a storage URL into (scheme, path_or_bucket, prefix).

    `file://./var/cache` and `file:///abs/path` give ("file", path, ""); the path is taken
    literally (no percent-decoding, no host part). `s3://BUCKET[/PREFIX]` gives
    ("s3", bucket, prefix) with the prefix stripped of surrounding slashes.
    """
    if url.startswith("file://"):
        path = url.removeprefix("file://")
        if not path:
            raise ValueError(f"storage URL {url!r} has no path (use file://./dir or file:///dir)")
        return "file", path, ""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not _BUCKET_RE.fullmatch(bucket):
            raise ValueError(f"storage URL {url!r} needs a valid bucket name: s3://BUCKET[/PREFIX]")
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except ValueError as exc:
                raise ValueError(f"storage URL {url!r} has an invalid prefix: {exc}") from None
        return "s3", bucket, prefix
    raise ValueError(
        f"unsupported storage URL {url!r}: expected file://PATH or s3://BUCKET[/PREFIX]"
    )


def storage_from_url(url: str, s3_client: Any = None, s3_presign_client: Any = None) -> Storage:
    """Build the storage a URL names. `s3://` URLs need an open client (see open_s3_client)."""
    scheme, location, prefix = parse_storage_url(url)
    if scheme == "file":
        return FilesystemStorage(location)
    if s3_client is None:
        raise ValueError(f"storage URL {url!r} needs an S3 client, but none was configured")
    return S3Storage(s3_client, location, prefix, presign_client=s3_presign_client)
