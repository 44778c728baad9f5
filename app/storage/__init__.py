"""Pluggable object storage: a local directory (`file://`) or an S3 bucket (`s3://`)."""

from __future__ import annotations

from typing import Any

from .base import (
    Leftover,
    ObjectInfo,
    Placement,
    PresignedPost,
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
from .resumable import Resumable, ResumableDataLost, ResumableState
from .s3 import S3Storage, S3StorageError, open_s3_client
from .url import StorageURL

__all__ = [
    "MARKER_KEY",
    "FilesystemStorage",
    "Leftover",
    "MarkerUnreadable",
    "ObjectInfo",
    "Placement",
    "PresignedPost",
    "Resumable",
    "ResumableDataLost",
    "ResumableState",
    "S3Storage",
    "S3StorageError",
    "Storage",
    "StorageAccessDenied",
    "StorageFull",
    "StorageIdentity",
    "StorageObjectNotFound",
    "StorageURL",
    "content_disposition",
    "has_data",
    "is_reserved",
    "open_read",
    "open_s3_client",
    "read_marker",
    "storage_from_url",
    "validate_key",
    "write_marker",
]


def storage_from_url(url: str | StorageURL, s3_client: Any = None,
                     s3_presign_client: Any = None) -> Storage:
    """Build the storage a URL names. `s3://` URLs need an open client (see open_s3_client)."""
    parsed = url if isinstance(url, StorageURL) else StorageURL.parse(url)
    if parsed.scheme == "file":
        return FilesystemStorage(parsed.location)
    if s3_client is None:
        raise ValueError(f"storage URL {str(url)!r} needs an S3 client, but none was"
                         " configured")
    return S3Storage(s3_client, parsed.location, parsed.prefix, presign_client=s3_presign_client)
