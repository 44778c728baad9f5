"""Stream an upload into the cache: sniff, check, hash and count as the bytes go by."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidInput, UnsupportedMediaType, UploadTooLarge
from app.media.image import image_dimensions
from app.media.sniff import SNIFF_BYTES, sniff_mime
from app.profiles import Profile
from app.storage import Storage


@dataclass
class Received:
    """A file that is in the cache, durable, and fits its profile."""

    key: str
    size: int
    sha256: str
    mime_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_against_profile(profile: Profile, *, mime_type: str, size: int | None,
                          max_upload_size: int, metadata: dict[str, Any]) -> None:
    """Raise the error a file of this type/size/pixels meets under the profile."""
    limit = profile.size_limit(max_upload_size)
    if size is not None and size > limit:
        raise UploadTooLarge(f"the file is larger than {limit} bytes (profile {profile.name!r})")
    if not profile.allows_type(mime_type):
        raise UnsupportedMediaType(
            f"{mime_type} is not allowed by profile {profile.name!r}"
            f" (allowed: {', '.join(profile.types)})"
        )
    if profile.max_pixels and "width" in metadata:
        pixels = metadata["width"] * metadata["height"]
        if pixels > profile.max_pixels:
            raise InvalidInput(
                f"the image has {pixels} pixels; profile {profile.name!r} allows"
                f" {profile.max_pixels}"
            )


async def receive(
    chunks: AsyncIterable[bytes],
    *,
    storage: Storage,
    key: str,
    profile: Profile,
    max_upload_size: int,
) -> Received:
    """Write the stream to ``storage`` at ``key``; on any refusal nothing is left behind."""
    limit = profile.size_limit(max_upload_size)
    source = aiter(chunks)
    head = await _read_head(source, limit)
    mime_type = sniff_mime(head[:SNIFF_BYTES])
    metadata = image_dimensions(head) if mime_type.startswith("image/") else None
    metadata = metadata or {}
    # type and pixels are refused before a single byte is stored
    check_against_profile(profile, mime_type=mime_type, size=None,
                          max_upload_size=max_upload_size, metadata=metadata)

    hasher = hashlib.sha256(head)
    size = len(head)

    async def body() -> AsyncIterator[bytes]:
        nonlocal size
        if head:
            yield head
        async for chunk in source:
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(
                    f"the file is larger than {limit} bytes (profile {profile.name!r})"
                )
            # hashlib drops the GIL for large buffers: hashing in a thread overlaps with
            # receiving the next chunk instead of stalling the event loop.
            if len(chunk) >= 256 * 1024:
                await asyncio.to_thread(hasher.update, chunk)
            else:
                hasher.update(chunk)
            yield chunk

    await storage.write(key, body(), content_type=mime_type)
    return Received(key=key, size=size, sha256=hasher.hexdigest(), mime_type=mime_type,
                    metadata=metadata)


async def _read_head(source: AsyncIterator[bytes], limit: int) -> bytes:
    buf = bytearray()
    while len(buf) < SNIFF_BYTES:
        try:
            chunk = await anext(source)
        except StopAsyncIteration:
            break
        buf += chunk
        if len(buf) > limit:
            raise UploadTooLarge(f"the file is larger than {limit} bytes")
    return bytes(buf)
