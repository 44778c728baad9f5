"""Stream an upload into the cache: sniff, check, hash and count as the bytes go by."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidInput, UnsupportedMediaType, UploadTooLarge
from app.media import strip
from app.media.image import image_dimensions
from app.media.sniff import SNIFF_BYTES, sniff_mime
from app.offload import OrderedOffload
from app.profiles import Profile
from app.storage import Storage, one_chunk
from app.storage.base import run_shielded

log = logging.getLogger(__name__)

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
    # the bytes went through the metadata stripper (whether or not it found anything): what
    # record() compares with the final profile when that is not the one received under
    metadata_stripped: bool = False


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
    if profile.strips(mime_type):
        if len(head) >= SNIFF_BYTES:  # more to come: filtered as it streams
            return await _receive_stripped(source, head, storage=storage, key=key,
                                           mime_type=mime_type, metadata=metadata,
                                           limit=limit, profile=profile)
        # _read_head stops short only at the end: the whole file is here, stripped at once
        head, report = strip.strip_bytes(mime_type, head)
        _noted(metadata, report, key)

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
                    metadata=metadata, metadata_stripped=profile.strips(mime_type))


async def _receive_stripped(source: AsyncIterator[bytes], head: bytes, *, storage: Storage,
                            key: str, mime_type: str, metadata: dict[str, Any], limit: int,
                            profile: Profile) -> Received:
    """`receive` for a JPEG, PNG or WebP whose metadata goes: the filter sits in front of the
    hash and the write, so `size` and `sha256` describe the bytes stored. The limit counts the
    bytes received. A WebP is stored as it comes while its layout is read, and rewritten
    afterwards only when it has metadata chunks (they come last: see app/media/strip.py)."""
    scanner = strip.WebpScanner() if mime_type == strip.WEBP else None
    filt = _Tap(scanner) if scanner is not None else strip.new_filter(mime_type)
    received = len(head)

    async def counted() -> AsyncIterator[bytes]:
        nonlocal received
        yield head
        async for chunk in source:
            received += len(chunk)
            if received > limit:
                raise UploadTooLarge(
                    f"the file is larger than {limit} bytes (profile {profile.name!r})"
                )
            yield chunk

    stored, sha256 = await _write_filtered(storage, key, counted(), filt, mime_type)
    report = filt.report
    if scanner is not None:
        plan = scanner.finish()
        report = plan.report
        if report.changed:
            try:
                stored, sha256 = await _rewrite_in_place(storage, key, plan.filter, mime_type)
            except BaseException:
                await run_shielded(storage.delete(key))  # a refused upload leaves nothing
                raise
    _noted(metadata, report, key)
    return Received(key=key, size=stored, sha256=sha256, mime_type=mime_type,
                    metadata=metadata, metadata_stripped=True)


class _Tap:
    """A WebP's first pass, as a filter that changes nothing."""

    def __init__(self, scanner: strip.WebpScanner) -> None:
        self.scanner = scanner
        self.report = scanner.report

    def feed(self, data: bytes) -> bytes:
        self.scanner.feed(data)
        return data

    def finish(self) -> bytes:
        return b""


def _noted(metadata: dict[str, Any], report: strip.Report, key: str) -> None:
    """What the stripper did, into the attachment's metadata (and the log, when it stopped
    early: the upload is kept, with whatever it could not remove)."""
    if report.changed:
        metadata["stripped"] = sorted(report.removed)
    if report.note:
        log.warning("metadata of %s only partly removed: %s", key, report.note)


# --- files already in the cache (tus, presigned) ------------------------------------------------

def side_key(key: str) -> str:
    """Where a file waits while it is rewritten into its own key without its metadata (never
    left behind but by a crash; `stowage fsck` removes such leftovers)."""
    return f"{key}.unstripped"


@dataclass
class _Rewritten:
    report: strip.Report
    size: int | None = None  # None: the file needs no change and was left alone
    sha256: str | None = None


async def _strip_stored(storage: Storage, src: str, dest: str, *, mime_type: str, head: bytes,
                        size: int) -> _Rewritten:
    """Write the file at `src` to `dest` (`src` itself: in place) without its metadata; left
    alone (and not written to `dest`) when it has none, as far as can be told cheaply."""
    if size <= len(head):  # all of it is here
        data, report = strip.strip_bytes(mime_type, head[:size])
        if not report.changed:
            return _Rewritten(report)
        await storage.write(dest, one_chunk(data), content_type=mime_type)
        return _Rewritten(report, len(data), hashlib.sha256(data).hexdigest())
    if mime_type == strip.JPEG:
        # all of a JPEG's metadata comes before its first scan, nearly always in the head
        probe = strip.JpegStripper()
        probe.feed(head)
        if probe.settled and not probe.report.changed:
            return _Rewritten(probe.report)
    source = src
    if src == dest:  # read a copy (a link, on the filesystem) while the key is rewritten
        source = side_key(dest)
        await storage.copy_from(storage, src, source)
    try:
        if mime_type == strip.WEBP:
            scanner = strip.WebpScanner()
            async with contextlib.aclosing(storage.read(source)) as chunks:
                async for chunk in chunks:
                    scanner.feed(chunk)
            plan = scanner.finish()
            if not plan.report.changed:
                return _Rewritten(plan.report)
            filt: strip.Filter = plan.filter()
        else:
            filt = strip.new_filter(mime_type)
        written, sha256 = await _rewrite(storage, source, dest, filt, mime_type)
        return _Rewritten(filt.report, written, sha256)
    finally:
        if source != src:
            await run_shielded(storage.delete(source))


async def _rewrite_in_place(storage: Storage, key: str,
                            make_filter: Callable[[], strip.Filter],
                            mime_type: str) -> tuple[int, str]:
    """Rewrite `key` through a filter, reading a copy of it (a link, on the filesystem)."""
    source = side_key(key)
    await storage.copy_from(storage, key, source)
    try:
        return await _rewrite(storage, source, key, make_filter(), mime_type)
    finally:
        await run_shielded(storage.delete(source))


async def _rewrite(storage: Storage, src: str, dest: str, filt: strip.Filter,
                   mime_type: str) -> tuple[int, str]:
    """Copy `src` to `dest` through `filt`: (size, sha256) of what was written."""
    async with contextlib.aclosing(storage.read(src)) as chunks:
        return await _write_filtered(storage, dest, chunks, filt, mime_type)


async def _write_filtered(storage: Storage, key: str, chunks: AsyncIterable[bytes],
                          filt: Any, mime_type: str) -> tuple[int, str]:
    """Write `chunks` through `filt` to `key` in blocks, hashing what is written behind the
    write: (size, sha256) of the bytes stored. The one filtered write of both an upload as it
    streams and a rewrite of a file already in the cache."""
    hashing = HashBehind(hashlib.sha256())
    written = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal written
        buf = bytearray()
        async for chunk in chunks:
            buf += filt.feed(chunk)
            if len(buf) >= BLOCK:
                block, buf = buf, bytearray()
                written += len(block)
                await hashing.feed(block)
                yield block
        buf += filt.finish()
        if buf:
            written += len(buf)
            await hashing.feed(buf)
            yield buf

    try:
        await storage.write(key, body(), content_type=mime_type)
    finally:
        await hashing.settle()
    return written, (await hashing.digest()).hex()



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
                  declared_size: int | None = None,
                  dest: str | None = None) -> Received:
    """Describe and check an object already in `storage` (a presigned or tus upload): the
    same facts and refusals as `receive`. ``sha256``, when the caller hashed the bytes as they
    arrived, saves reading them all back; ``declared_size`` is the most bytes the client said
    it would send (a presign's size).

    With ``dest`` (the attachment's cache key, which may be ``key`` itself), the file is then
    put there: linked or copied server-side as it is, without writing the bytes again, or,
    when the profile strips the metadata of its type and it has some, rewritten there without
    it (read once more, and hashed as written)."""
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
    stripped = dest is not None and profile.strips(mime_type)
    if stripped:
        assert dest is not None
        done = await _strip_stored(storage, key, dest, mime_type=mime_type, head=head,
                                   size=info.size)
        _noted(metadata, done.report, dest)
        if done.size is not None:
            assert done.sha256 is not None
            return Received(key=dest, size=done.size, sha256=done.sha256, mime_type=mime_type,
                            metadata=metadata, metadata_stripped=True)
    if sha256 is None:
        hasher = hashlib.sha256()
        async for chunk in storage.read(key):
            await asyncio.to_thread(hasher.update, chunk)  # 1 MiB chunks: off the event loop
        sha256 = hasher.hexdigest()
    if dest is not None and dest != key:
        await storage.copy_from(storage, key, dest, content_type=mime_type)
    return Received(key=dest or key, size=info.size, sha256=sha256, mime_type=mime_type,
                    metadata=metadata, metadata_stripped=stripped)


async def restrip(storage: Storage, received: Received, profile: Profile) -> Received:
    """The file as `profile` stores it, when it was received under another one (a multipart
    form whose ``profile`` field comes after the file part)."""
    strips = profile.strips(received.mime_type)
    if strips == received.metadata_stripped:
        return received
    if not strips:
        if "stripped" in received.metadata:  # what was removed cannot be put back
            raise InvalidInput(
                f"profile {profile.name!r} keeps metadata, but the file was received under a"
                " profile that removed it: send the profile field before the file part",
                field="profile")
        return dataclasses.replace(received, metadata_stripped=False)
    head = await storage.read_head(received.key, SNIFF_BYTES)
    done = await _strip_stored(storage, received.key, received.key,
                               mime_type=received.mime_type, head=head, size=received.size)
    metadata = dict(received.metadata)
    _noted(metadata, done.report, received.key)
    if done.size is None:
        return dataclasses.replace(received, metadata=metadata, metadata_stripped=True)
    assert done.sha256 is not None
    return dataclasses.replace(received, size=done.size, sha256=done.sha256,
                               metadata=metadata, metadata_stripped=True)
