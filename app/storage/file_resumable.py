"""The resumable-upload capability on the filesystem: one file, written in place at the
recorded offset and fsynced before each offset is recorded."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Any, TypeVar

from app.offload import OrderedOffload

from .base import explain_os_errors
from .filesystem import FilesystemStorage, ensure_dir, fsync_dir, start_writeback
from .resumable import Record, ResumableDataLost, ResumableState, Verify, drive, no_chunks

T = TypeVar("T")

MiB = 1024 * 1024
WRITE_BUFFER = 1 * MiB
# Without verify (which covers the whole write) progress is recorded every so often, so a
# server crash in a long write loses at most this much.
CHECKPOINT_BYTES = 16 * MiB


class FileResumable:
    def __init__(self, storage: FilesystemStorage, key: str, length: int) -> None:
        self.storage = storage
        self.key = key
        self.length = length
        self.path = storage.path_for(key)

    async def write_at(self, offset: int, chunks: AsyncIterable[bytes], *, record: Record,
                       verify: Verify | None = None) -> int:
        # a full or unwritable disk under the file is a 507 or a configuration error, like
        # any storage write's, not an outage
        with explain_os_errors("write", self.path):
            writer = _FileWriter(self, offset, record, checkpoints=verify is None)
            return await drive(writer, chunks, verify)

    async def finish(self) -> ResumableState:
        if self.length == 0 and await self.storage.stat(self.key) is None:
            await self.storage.write(self.key, no_chunks())  # no write_at made the file
        return ResumableState()

    async def abort(self) -> None:
        await self.storage.delete(self.key)


class _FileWriter:
    """Writes at the recorded offset into the file (pwrite, not O_APPEND: a stale writer that
    lost its lease can then only rewrite the same bytes at the same places)."""

    def __init__(self, upload: FileResumable, offset: int, record: Record,
                 checkpoints: bool) -> None:
        self.path = upload.path
        self.length = upload.length
        self.record = record
        self.checkpoints = checkpoints
        self.committed = offset
        self.pos = offset
        self.fd: int | None = None
        self.buf = bytearray()
        self._inflight: asyncio.Future[Any] | None = None
        self._writes = OrderedOffload()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        await self._writes.drain()  # the queued writes first; raises the first one's error
        # shielded: a cancelled request must not close the fd under a running thread
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._inflight = fut
        return await asyncio.shield(fut)

    async def open(self) -> None:
        self.fd = await self._run(_open_upload_file, self.path, self.pos)

    async def write(self, chunk: bytes | bytearray) -> None:
        """Queue ``chunk``'s write; the caller must not change it afterwards."""
        if not self.buf and len(chunk) >= WRITE_BUFFER:
            await self._submit(chunk)  # a whole block already: no copy
        else:
            self.buf += chunk
            if len(self.buf) < WRITE_BUFFER:
                return
            await self._flush()
        if (self.checkpoints and self.pos - self.committed >= CHECKPOINT_BYTES
                and self.pos < self.length):
            await self._commit()

    async def save(self) -> int:
        await self._flush()
        if self.pos != self.committed:
            await self._commit()
        return self.committed

    async def discard(self) -> None:
        self.buf = bytearray()
        self.pos = self.committed
        if self.fd is not None:
            await self._run(os.ftruncate, self.fd, self.committed)

    async def close(self) -> None:
        await self._writes.settle()
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    async def _flush(self) -> None:
        """Queue the buffer's write, behind: the next blocks are received meanwhile."""
        if self.buf:
            # a fresh buffer, not clear(): the thread holds the old one
            buf, self.buf = self.buf, bytearray()
            await self._submit(buf)

    async def _submit(self, data: bytes | bytearray) -> None:
        assert self.fd is not None
        await self._writes.submit(_pwrite_all, self.fd, data, self.pos)
        self.pos += len(data)

    async def _commit(self) -> None:
        assert self.fd is not None
        await self._run(os.fsync, self.fd)  # after the queued writes (_run drains them)
        await self.record(self.pos, ResumableState())
        self.committed = self.pos


def _open_upload_file(path: Path, offset: int) -> int:
    created = not path.exists()
    if created:
        ensure_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            raise ResumableDataLost(str(path))
        if size > offset:
            os.ftruncate(fd, offset)  # never acknowledged: a write that died before recording
        if created:
            fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, data: bytes | bytearray, pos: int) -> None:
    start = pos
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n
    start_writeback(fd, start, pos - start)  # the closing fsync is then short
