"""Pluggable object storage: a local directory (`file://`) or an S3 bucket (`s3://`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    one_chunk,
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
from .url import StorageURL

if TYPE_CHECKING:
    from .s3 import S3Storage, S3StorageError, open_s3_client

_S3_NAMES = frozenset({"S3Storage", "S3StorageError", "open_s3_client"})


def __getattr__(name: str) -> Any:
    # imported on first use: aioboto3 takes half a second to import, which every command
    # that only reads its settings (StorageURL) would otherwise pay
    if name in _S3_NAMES:
        from . import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
    "one_chunk",
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
    from .s3 import S3Storage

    return S3Storage(s3_client, parsed.location, parsed.prefix, presign_client=s3_presign_client)
