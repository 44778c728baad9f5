"""Storage URLs (`file://PATH`, `s3://BUCKET[/PREFIX]`): parsed and checked in one place, for
the settings (a bad URL refuses to start) and for building the storage they name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .base import validate_key

# Permissive on purpose: S3-compatible servers accept names that AWS itself refuses.
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class StorageURL:
    """`file://./var/cache` and `file:///abs/path`: scheme "file", the path taken literally
    (no percent-decoding, no host part). `s3://BUCKET[/PREFIX]`: scheme "s3", the bucket, and
    the prefix stripped of surrounding slashes."""

    scheme: Literal["file", "s3"]
    location: str  # the folder's path, or the bucket
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> StorageURL:
        """Raises ValueError, naming the URL and what is wrong with it."""
        if url.startswith("file://"):
            path = url.removeprefix("file://")
            if not path:
                raise ValueError(f"storage URL {url!r} has no path (use file://./dir or"
                                 " file:///dir)")
            return cls("file", path)
        if url.startswith("s3://"):
            bucket, _, prefix = url.removeprefix("s3://").partition("/")
            if not _BUCKET_RE.fullmatch(bucket):
                raise ValueError(f"storage URL {url!r} needs a valid bucket name:"
                                 " s3://BUCKET[/PREFIX]")
            prefix = prefix.strip("/")
            if prefix:
                try:
                    validate_key(prefix)
                except ValueError as exc:
                    raise ValueError(f"storage URL {url!r} has an invalid prefix: {exc}"
                                     ) from None
            return cls("s3", bucket, prefix)
        raise ValueError(
            f"unsupported storage URL {url!r}: expected file://PATH or s3://BUCKET[/PREFIX]"
        )

    @property
    def needs_s3_client(self) -> bool:
        return self.scheme == "s3"

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.location}"
        return f"s3://{self.location}/{self.prefix}" if self.prefix else f"s3://{self.location}"
