"""The resumable-upload capability (tus): one object written in pieces, by any process, across
requests and restarts. Each piece is made durable before its offset is recorded, so the offset
the caller keeps always names bytes the storage has.

The caller keeps the durable offset and a `ResumableState` (what the storage needs to go on:
an S3 multipart upload's id and parts, the bytes after the last whole part), and hands both
back to `Storage.open_resumable` for the next piece.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .base import run_shielded


class ResumableDataLost(Exception):
    """The recorded offset promises bytes the storage no longer has."""


@dataclass(frozen=True)
class ResumableState:
    """What a storage keeps beside the durable offset (the filesystem: nothing). Held by the
    caller (the tus row's columns), given back to `open_resumable`."""

    # the S3 multipart upload's id; listed in `Storage.list_leftovers(keep=...)` while the
    # upload lives, so that a slow client's parts are not swept away
    handle: str | None = None
    # the whole parts uploaded, in order: {"PartNumber", "ETag", "Size"}
    parts: list[dict[str, Any]] = field(default_factory=list)
    # an object holding the bytes after the last whole part, and their number
    tail_key: str | None = None
    tail_size: int = 0


# Makes (offset, state) the caller's durable record; raises when the caller may no longer
# write (another request took the upload over), which ends the write.
Record = Callable[[int, ResumableState], Awaitable[None]]
Verify = Callable[[], Awaitable[None]]


class Resumable(Protocol):
    """One resumable upload of `length` bytes to `key` (see `Storage.open_resumable`)."""

    async def write_at(self, offset: int, chunks: AsyncIterable[bytes], *, record: Record,
                       verify: Verify | None = None) -> int:
        """Write `chunks` from `offset` (the recorded offset: bytes beyond it were never
        acknowledged and are overwritten), and return the new durable offset, recorded.

        Without `verify`, progress is recorded now and then during a long write (a crash
        loses little); with it, the chunks are one unit: `verify` runs after the last chunk,
        and if it raises nothing of them is kept. If `chunks` raises, nothing past the last
        recorded offset is kept either. ResumableDataLost: the storage has fewer bytes than
        `offset` (raised before `chunks` is read)."""
        ...

    async def finish(self) -> ResumableState:
        """Every byte is recorded: make the object under `key` (an S3 multipart upload is
        completed). Idempotent: a retry after a crash finds it done. Returns the state to
        record (the handle is gone)."""
        ...

    async def abort(self) -> None:
        """Remove what the upload made, finished or not: the object, an S3 multipart upload
        (also one whose id was never recorded), tail objects."""
        ...


class Writer(Protocol):
    """One `write_at` call's work on a backend; `drive` runs it."""

    async def open(self) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def save(self) -> int: ...

    async def discard(self) -> None: ...

    async def close(self) -> None: ...


async def drive(writer: Writer, chunks: AsyncIterable[bytes], verify: Verify | None) -> int:
    """The rules of `Resumable.write_at`, the same on every backend."""
    try:
        await writer.open()
        async for chunk in chunks:
            if chunk:
                await writer.write(chunk)
        if verify is not None:
            try:
                await verify()
            except BaseException:
                await writer.discard()
                raise
        return await writer.save()
    finally:
        await run_shielded(writer.close())


async def no_chunks() -> AsyncIterator[bytes]:
    """The bytes of an empty upload, which no write_at made."""
    return
    yield b""  # an empty async generator
