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
from app.offload import OrderedOffload
from app.profiles import Profile
from app.storage import Storage

# Network chunks are coalesced into blocks this big: one thread hop per block for the hash
# and one for the write.
BLOCK = 1 << 20
# An image's size may lie past the first SNIFF_BYTES (a JPEG whose ICC profile or XMP comes
# before its frame header): reading goes on this far for it, so that max_pixels holds there too.
IMAGE_HEADER_MAX = 1 << 20


class HashBehind:
    """Feeds blocks to a hashlib object in worker threads, in order, behind the event loop
    (hashlib drops the GIL for large blocks). A block handed over must not change afterwards.
    """

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self._updates = OrderedOffload()

    async def feed(self, block: bytes | bytearray) -> None:
        await self._updates.submit(self.hasher.update, block)

    async def drain(self) -> None:
        """Wait until every block fed is hashed; raise if one failed."""
        await self._updates.drain()

    async def digest(self) -> bytes:
        await self.drain()
        return bytes(self.hasher.digest())

    async def settle(self) -> None:
        """Wait for the blocks in flight (for cleanup: never raises); never leave a thread
        touching the hasher."""
        await self._updates.settle()


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
    metadata = None
    if mime_type.startswith("image/"):
        metadata = image_dimensions(head)
        if metadata is None and len(head) >= SNIFF_BYTES:  # the size may lie further in
            head = await _read_head(source, limit, head, IMAGE_HEADER_MAX)
            metadata = image_dimensions(head)
    metadata = metadata or {}
    # type and pixels are refused before a single byte is stored
    check_against_profile(profile, mime_type=mime_type, size=None,
                          max_upload_size=max_upload_size, metadata=metadata)

    hashing = HashBehind(hashlib.sha256(head))
    size = len(head)

    async def body() -> AsyncIterator[bytes]:
        nonlocal size
        if head:
            yield head
        buf = bytearray()
        async for chunk in source:
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(
                    f"the file is larger than {limit} bytes (profile {profile.name!r})"
                )
            buf += chunk
            if len(buf) >= BLOCK:
                # handed over as is (no copy) and never touched again: a new buffer follows
                block, buf = buf, bytearray()
                await hashing.feed(block)
                yield block
        if buf:
            await hashing.feed(buf)
            yield buf

    try:
        await storage.write(key, body(), content_type=mime_type)
    finally:
        await hashing.settle()
    return Received(key=key, size=size, sha256=(await hashing.digest()).hex(), mime_type=mime_type,
                    metadata=metadata)


async def _read_head(source: AsyncIterator[bytes], limit: int, start: bytes = b"",
                     want: int = SNIFF_BYTES) -> bytes:
    """``start`` and what follows it in ``source``, until there are ``want`` bytes (or the
    stream ends)."""
    buf = bytearray(start)
    while len(buf) < want:
        try:
            chunk = await anext(source)
        except StopAsyncIteration:
            break
        buf += chunk
        if len(buf) > limit:
            raise UploadTooLarge(f"the file is larger than {limit} bytes")
    return bytes(buf)


async def inspect(storage: Storage, key: str, *, profile: Profile,
                  max_upload_size: int, sha256: str | None = None,
                  declared_size: int | None = None) -> Received:
    """Describe and check an object already in `storage` (a presigned or tus upload): the
    same facts and refusals as `receive`, without writing the bytes again. ``sha256``, when
    the caller hashed the bytes as they arrived, saves reading them all back;
    ``declared_size`` is the most bytes the client said it would send (a presign's size)."""
    info = await storage.stat(key)
    if info is None:
        raise InvalidInput("the uploaded file is not there (anymore)")
    head = await storage.read_head(key, SNIFF_BYTES)
    mime_type = sniff_mime(head)
    metadata = None
    if mime_type.startswith("image/"):
        metadata = image_dimensions(head)
        if metadata is None and info.size > len(head):  # the size may lie further in
            metadata = image_dimensions(await storage.read_head(key, IMAGE_HEADER_MAX))
    metadata = metadata or {}
    check_against_profile(profile, mime_type=mime_type, size=info.size,
                          max_upload_size=max_upload_size, metadata=metadata)
    if declared_size is not None and info.size > declared_size:
        # S3 enforces the presign's content-length-range; not every S3-compatible store does
        raise InvalidInput(f"the uploaded file has {info.size} bytes; the presigned upload"
                           f" declared {declared_size}", field="cached_key")
    if sha256 is None:
        hasher = hashlib.sha256()
        async for chunk in storage.read(key):
            await asyncio.to_thread(hasher.update, chunk)  # 1 MiB chunks: off the event loop
        sha256 = hasher.hexdigest()
    return Received(key=key, size=info.size, sha256=sha256, mime_type=mime_type,
                    metadata=metadata)
